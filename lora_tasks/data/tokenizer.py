"""Tokenization with the ``tokenizers`` library from a model folder's ``tokenizer.json``.

No MLX here: token ids are numpy arrays, so tokenizing, caching and batching work without a model.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

Padding = Literal["longest", "max_length", False]


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: int32 arrays of shape (batch, seq)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _pad_id(tok: _HFTokenizer) -> int:
    """The padding id the file declares, else ``[PAD]`` (BERT) or ``<pad>`` (MPNet, RoBERTa), else 0.
    It matters beyond the mask: MPNet counts positions over the tokens that are not padding."""
    declared = tok.padding
    if declared and declared.get("pad_id") is not None:
        return int(declared["pad_id"])
    for token in ("[PAD]", "<pad>"):
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


class Tokenizer:
    """A thin wrapper that owns padding and truncation (tokenizer.json files often fix them)."""

    def __init__(self, hf_tokenizer: _HFTokenizer, source: str = "") -> None:
        self._tok = hf_tokenizer
        self.pad_id = _pad_id(hf_tokenizer)
        self._tok.no_padding()
        self._tok.no_truncation()
        self.source = source
        # truncation is tokenizer state: serialize calls so threads (parallel adapters) can share one
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No tokenizer file at {path}; a model folder needs tokenizer.json.")
        return cls(_HFTokenizer.from_file(str(path)), source=str(path))

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None) -> "Tokenizer":
        """Tokenizer of a model id or folder, resolved like the weights (see :mod:`lora_tasks.hub`)."""
        from lora_tasks.hub import resolve_model_dir

        return cls.from_file(resolve_model_dir(model) / "tokenizer.json")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def fingerprint(self) -> str:
        """A stable string identifying the vocabulary and rules (for cache keys)."""
        return self._tok.to_str()

    def lengths(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """Untruncated token counts (with special tokens): the input to max_seq_len choices."""
        with self._lock:
            encs = self._encode(texts, text_pairs)
        return np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))

    def _encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None):
        texts = [str(t) for t in texts]
        if text_pairs is None:
            return self._tok.encode_batch(texts)
        if len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs; pass one pair per text.")
        return self._tok.encode_batch(list(zip(texts, [str(p) for p in text_pairs], strict=True)))

    def __call__(
        self,
        texts: Sequence[str] | str,
        text_pairs: Sequence[str] | str | None = None,
        *,
        max_length: int = 512,
        padding: Padding = "longest",
        truncation: bool = True,
    ) -> Encoded:
        """Tokenize a batch, truncate to ``max_length`` and pad (right) to the longest or to max_length."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(text_pairs, str):
            text_pairs = [text_pairs]
        if max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for [CLS] and [SEP]; use at least 8.")
        with self._lock:
            if truncation:
                self._tok.enable_truncation(max_length=max_length)
            try:
                encs = self._encode(texts, text_pairs)
            finally:
                self._tok.no_truncation()
        if not encs:
            empty = np.zeros((0, 0), dtype=np.int32)
            return Encoded(empty, empty, empty)
        longest = max(len(e.ids) for e in encs)
        if padding == "max_length":
            width = max(max_length, longest)
        elif padding == "longest":
            width = longest
        else:
            if len({len(e.ids) for e in encs}) > 1:
                raise ValueError("Sequences differ in length; use padding='longest' or 'max_length'.")
            width = longest
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(encs), width), dtype=np.int32)
        types = np.zeros((len(encs), width), dtype=np.int32)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            types[i, :n] = e.type_ids
        return Encoded(ids, mask, types)
