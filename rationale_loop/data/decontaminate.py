"""Keeping held-out questions out of training data: exact word n-gram overlap (13-grams, as the GPT-3
and Llama reports do), and near-duplicates by MinHash over word bigrams (datasketch's LSH), which
catches a held-out question reworded a little (a name changed, a word swapped) that shares no 13-gram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class Contamination:
    """Why a text was held to be a held-out question: 'ngram' or 'near_duplicate', or None."""

    ngram: int = 13
    threshold: float = 0.7  # estimated Jaccard similarity of word bigrams at which a text is a near-duplicate
    num_perm: int = 128

    def __post_init__(self) -> None:
        self._banned: set[tuple[str, ...]] = set()
        self._lsh = None

    def add(self, texts: Iterable[str]) -> "Contamination":
        from datasketch import MinHashLSH

        texts = list(texts)
        for text in texts:
            self._banned |= ngrams(text, self.ngram)
        if self.threshold < 1.0 and texts:
            self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
            for index, text in enumerate(texts):
                self._lsh.insert(str(index), self._minhash(text))
        return self

    def _minhash(self, text: str):
        from datasketch import MinHash

        signature = MinHash(num_perm=self.num_perm, seed=1)
        for shingle in ngrams(text, 2) or {tuple(words(text))}:
            signature.update(" ".join(shingle).encode())
        return signature

    def reason(self, text: str) -> str | None:
        if self._banned and ngrams(text, self.ngram) & self._banned:
            return "ngram"
        if self._lsh is not None and self._lsh.query(self._minhash(text)):
            return "near_duplicate"
        return None
