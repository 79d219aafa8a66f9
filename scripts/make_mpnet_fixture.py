"""Generate the committed MPNet golden fixture with PyTorch and transformers.

Run once, in an environment that has torch (never a test or runtime dependency):

    /tmp/peer/bin/python scripts/make_mpnet_fixture.py

(torch 2.x, transformers 5.24, tokenizers, safetensors.) Writes:

- tests/fixtures/mpnet_tiny/: a tiny random ``MPNetModel`` (hidden 32, 3 layers, 4 heads, the
  real 32 relative-position buckets) as model.safetensors and config.json, plus a tiny WordPiece
  tokenizer.json laid out like MPNet's (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, RoBERTa's
  ``<s> A </s></s> B </s>``, padding declared with id 1).
- tests/fixtures/mpnet_tiny_expected.npz: token ids (one row of 50+ tokens, so key-query offsets
  reach the log-spaced buckets, and padded shorter rows), the attention mask, and transformers'
  last hidden states.

Weights are redrawn at unit-ish scale (HF's init, std 0.02, would make every layer nearly the
identity and let a wrong position bias slip through).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import MPNetConfig, MPNetModel

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FOLDER = OUT / "mpnet_tiny"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the house by the river",  # long: far offsets
    "the price of the house",
    "a fox",
    "a",
]


def tiny_tokenizer() -> Tokenizer:
    """WordPiece over single letters (plus a few words), so sentences become long token rows."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + letters + ["##" + c for c in letters]
    vocab += ["the", "house", "price", "fox", "dog"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    return tok


def randomize(model: MPNetModel) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "embeddings" not in name and "relative_attention_bias" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[1] ** 0.5))
            else:  # embeddings, biases and the position bias table: unit scale
                p.copy_(torch.randn(p.shape, generator=g))


def main() -> None:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = MPNetConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=130, relative_attention_num_buckets=32,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    model = MPNetModel(cfg, add_pooling_layer=False).eval()
    randomize(model)

    shutil.rmtree(FOLDER, ignore_errors=True)
    model.save_pretrained(str(FOLDER), safe_serialization=True)
    tok.save(str(FOLDER / "tokenizer.json"))

    encs = tok.encode_batch(SENTENCES)
    batch = {"input_ids": np.array([e.ids for e in encs], np.int32),
             "attention_mask": np.array([e.attention_mask for e in encs], np.int32)}
    assert batch["input_ids"].shape[1] > 40, batch["input_ids"].shape
    with torch.no_grad():
        out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state
    np.savez_compressed(OUT / "mpnet_tiny_expected.npz", **batch, last_hidden_state=out.numpy().astype(np.float32))
    sizes = {str(p.relative_to(OUT)): p.stat().st_size for p in FOLDER.iterdir()}
    sizes["mpnet_tiny_expected.npz"] = (OUT / "mpnet_tiny_expected.npz").stat().st_size
    print(json.dumps(sizes, indent=1), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
