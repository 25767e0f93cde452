"""Frozen-encoder features for the data audit: one vector per text, or per word.

The audit needs a representation in which similar texts are close (near duplicates, leakage,
outliers) and a linear classifier can be fitted quickly (out-of-fold label-issue probabilities).
The pretrained body of the run's model, mean-pooled over real tokens and L2-normalised, is both,
and it is computed once for every check. Batches are length-sorted so short texts do not pay for
long ones' padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class FrozenEncoder:
    """The pretrained body of a model, used only forward, to turn texts into vectors."""

    def __init__(
        self, path: str, max_length: int, batch_size: int = 64, trust_remote_code: bool = False
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text becomes, special tokens included (what `max_length` truncates)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised, mean-pooled vector per text (rows in the order given)."""
        out: np.ndarray | None = None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self._hidden(batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[-1]), dtype=np.float32)
            out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out if out is not None else np.zeros((0, 1), dtype=np.float32)

    def words(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence, one vector per word: its first sub-token's contextual state.

        Words beyond `max_length` tokens get the last kept sub-token's state, so every word has a
        vector (the audit then scores it with less context rather than dropping it).
        """
        result: list[np.ndarray] = [np.zeros((0, 1), dtype=np.float32)] * len(sentences)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [list(sentences[i]) for i in index],
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self._hidden(batch).numpy()
            for row, i in enumerate(index):
                result[i] = _first_subtokens(hidden[row], batch.word_ids(row), len(sentences[i]))
        return result

    def _hidden(self, batch: Any) -> torch.Tensor:
        with torch.inference_mode():
            names = ("input_ids", "attention_mask", "token_type_ids")
            inputs = {k: v for k, v in batch.items() if k in names}
            return self.model(**inputs).last_hidden_state.float()


def _first_subtokens(hidden: np.ndarray, word_ids: Sequence[int | None], n_words: int) -> np.ndarray:
    vectors = np.zeros((n_words, hidden.shape[-1]), dtype=np.float32)
    seen: set[int] = set()
    last = 0
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        last = position
        if word not in seen:
            seen.add(word)
            vectors[word] = hidden[position]
    for word in range(n_words):
        if word not in seen:
            vectors[word] = hidden[last]
    return vectors
