"""Generate the committed RoBERTa, DistilBERT and ELECTRA golden fixtures with transformers.

Run once, in an environment that has torch (never a test or runtime dependency):

    /tmp/peer/bin/python scripts/make_bert_family_fixtures.py

(torch 2.x, transformers 5.24, tokenizers, safetensors.) For each architecture it writes
tests/fixtures/<name>_tiny/ (a tiny random bare model as model.safetensors + config.json, and a
tiny WordPiece tokenizer.json) and tests/fixtures/<name>_tiny_expected.npz (token ids with padded
rows, the attention mask, transformers' last hidden states):

- roberta: positions counted from ``pad_token_id + 1`` over the real tokens, one token type,
  ``<s> A </s>`` with ``<pad>`` = 1 (as roberta-base, xlm-roberta, twitter-roberta);
- distilbert: no token types, its own layer names (``q_lin``, ``sa_layer_norm``, ``ffn.lin1``);
- electra: word embeddings narrower than the hidden size, projected up (``embeddings_project``).

and tests/fixtures/peft_roberta_lora/ (+ ``_expected.npz``): an adapter PEFT itself wrote on the tiny
RoBERTa (r=4 on query/value, random B so it changes the states) and PEFT's outputs with it.

Weights are redrawn at unit-ish scale (HF's init, std 0.02, would make every layer nearly the
identity and let a wrong position or a missing projection slip through).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from make_mpnet_fixture import tiny_tokenizer as roberta_tokenizer  # <s> 0, <pad> 1, </s> 2: RoBERTa's layout
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import DistilBertConfig, DistilBertModel, ElectraConfig, ElectraModel, RobertaConfig, RobertaModel

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "the price of the house",
    "a fox",
]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
WORDS = ["the", "house", "price", "fox", "dog"]


def bert_tokenizer() -> Tokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + LETTERS + ["##" + c for c in LETTERS] + WORDS
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def randomize(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "embeddings." not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[1] ** 0.5))
            else:  # embeddings and biases: unit scale
                p.copy_(torch.randn(p.shape, generator=g))


def write_peft(model: torch.nn.Module, tok: Tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    folder = OUT / "peft_roberta_lora"
    shutil.rmtree(folder, ignore_errors=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                  lora_dropout=0.0)).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's model card: not needed
    encs = tok.encode_batch(SENTENCES)
    batch = {"input_ids": np.array([e.ids for e in encs], np.int32),
             "attention_mask": np.array([e.attention_mask for e in encs], np.int32)}
    with torch.no_grad():
        out = peft_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state
    np.savez_compressed(OUT / "peft_roberta_lora_expected.npz", **batch, last_hidden_state=out.numpy())
    print("peft_roberta_lora", sorted(p.name for p in folder.iterdir()))


def write(name: str, model: torch.nn.Module, tok: Tokenizer) -> torch.nn.Module:
    model.eval()
    randomize(model)
    folder = OUT / f"{name}_tiny"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    encs = tok.encode_batch(SENTENCES)
    batch = {"input_ids": np.array([e.ids for e in encs], np.int32),
             "attention_mask": np.array([e.attention_mask for e in encs], np.int32)}
    with torch.no_grad():
        out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state
    np.savez_compressed(OUT / f"{name}_tiny_expected.npz", **batch, last_hidden_state=out.numpy().astype(np.float32))
    size = sum(p.stat().st_size for p in folder.iterdir()) + (OUT / f"{name}_tiny_expected.npz").stat().st_size
    print(name, json.dumps(sorted(p.name for p in folder.iterdir())), size, "bytes")
    return model


def main() -> None:
    torch.manual_seed(0)
    rtok, btok = roberta_tokenizer(), bert_tokenizer()
    roberta = write("roberta", RobertaModel(RobertaConfig(
        vocab_size=rtok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, layer_norm_eps=1e-5), add_pooling_layer=False), rtok)
    write("distilbert", DistilBertModel(DistilBertConfig(
        vocab_size=btok.get_vocab_size(), dim=32, hidden_dim=48, n_layers=2, n_heads=4,
        max_position_embeddings=64, pad_token_id=0)), btok)
    write("electra", ElectraModel(ElectraConfig(
        vocab_size=btok.get_vocab_size(), embedding_size=16, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)), btok)
    write_peft(roberta, rtok)  # last: PEFT wraps the model in place


if __name__ == "__main__":
    main()
