"""Generate the committed ModernBERT golden fixture with PyTorch and transformers.

Run once, in an environment that has torch (never a test or runtime dependency):

    /work/torchvenv/bin/python scripts/make_modernbert_fixture.py

(torch 2.13, transformers 5.24, tokenizers, safetensors.) Writes:

- tests/fixtures/modernbert_tiny/: a tiny random ``ModernBertModel`` (hidden 32, 3 layers of
  which layer 1 is local with a window of 8, i.e. +-4 tokens) as model.safetensors, its
  config.json and a tiny WordPiece tokenizer.json.
- tests/fixtures/modernbert_tiny_expected.npz: token ids (one row of 40+ tokens so the local
  window matters, padded shorter rows), the attention mask, and transformers' last hidden states
  with eager attention.

The random weights are redrawn at unit-ish scale (HF's init, std 0.02, makes attention almost
uniform and every layer almost the identity, which would let wrong RoPE or masks slip through).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import ModernBertConfig, ModernBertModel

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FOLDER = OUT / "modernbert_tiny"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the house",  # long: > local window
    "the price of the house",
    "a fox",
    "a",
]


def tiny_tokenizer() -> Tokenizer:
    """WordPiece over single letters (plus a few words), so sentences become long token rows."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
    vocab += ["the", "house", "price", "fox", "dog"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


def encode(tok: Tokenizer) -> dict[str, np.ndarray]:
    encs = tok.encode_batch(SENTENCES)
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def randomize(model: ModernBertModel) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # LayerNorm weights near 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "embeddings" not in name:  # linear: fan-in scaled
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[1] ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g))


def main() -> None:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = ModernBertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64, local_attention=8, global_attn_every_n_layers=2,
        pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
        attn_implementation="eager",
    )
    assert cfg.layer_types == ["full_attention", "sliding_attention", "full_attention"], cfg.layer_types
    model = ModernBertModel(cfg).eval()
    randomize(model)

    shutil.rmtree(FOLDER, ignore_errors=True)
    model.save_pretrained(str(FOLDER), safe_serialization=True)
    tok.save(str(FOLDER / "tokenizer.json"))

    batch = encode(tok)
    assert batch["input_ids"].shape[1] > 4 * cfg.local_attention, batch["input_ids"].shape
    with torch.no_grad():
        out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state
        # the local layer must matter: the same model with only global layers gives other outputs
        full = ModernBertModel.from_pretrained(str(FOLDER), layer_types=["full_attention"] * 3,
                                               attn_implementation="eager").eval()
        other = full(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state
    print("max |local - all-global| on the long row:", float((out[0] - other[0]).abs().max()))
    np.savez_compressed(OUT / "modernbert_tiny_expected.npz", **batch,
                        last_hidden_state=out.numpy().astype(np.float32))
    sizes = {str(p.relative_to(OUT)): p.stat().st_size for p in FOLDER.iterdir()}
    sizes["modernbert_tiny_expected.npz"] = (OUT / "modernbert_tiny_expected.npz").stat().st_size
    print(json.dumps(sizes, indent=1), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
