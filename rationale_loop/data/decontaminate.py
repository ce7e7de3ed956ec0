"""Keeping held-out questions out of training data, three ways, each one catching what the one before misses:
- exact word n-gram overlap (13-grams, as the GPT-3 and Llama reports do) anywhere in the text;
- near-duplicates by MinHash over word bigrams (datasketch's LSH): a held-out question reworded a little
  (a name changed, a word swapped) that shares no 13-gram;
- when an embedding model is configured, cosine similarity of sentence embeddings (sentence-transformers)
  through a faiss inner-product index: a paraphrase that shares few words.
The last two look at an instruction (a conversation's first user turn), the first at the whole text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

WORD = re.compile(r"\w+")

# Why a text is held to be a held-out one; also the manifest's counters (sources.Mixed).
NGRAM, NEAR_DUPLICATE, SEMANTIC = "ngram", "near_duplicate", "semantic"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class Match:
    reason: str  # NGRAM, NEAR_DUPLICATE or SEMANTIC
    held_out: int  # index of the held-out text it matched
    score: float | None = None  # the cosine similarity, for SEMANTIC


@dataclass
class Contamination:
    ngram: int = 13  # 0: no n-gram check
    threshold: float = 0.7  # estimated Jaccard similarity of word bigrams at which a text is a near-duplicate; 1.0: off
    num_perm: int = 128
    embedding_model: str | None = None  # a sentence-transformers model (path or hub id); None: no embedding check
    embedding_threshold: float = 0.9  # cosine similarity at which an instruction is a held-out question paraphrased
    embedding_batch: int = 64

    def __post_init__(self) -> None:
        self.held_out: list[str] = []
        self._banned: dict[tuple[str, ...], int] = {}
        self._lsh = None
        self._encoder = None
        self._index = None

    @property
    def embeds(self) -> bool:
        return self._index is not None

    def add(self, texts: Iterable[str]) -> "Contamination":
        from datasketch import MinHashLSH

        offset = len(self.held_out)
        texts = list(texts)
        self.held_out += texts
        if self.ngram > 0:
            for index, text in enumerate(texts, offset):
                for gram in ngrams(text, self.ngram):
                    self._banned.setdefault(gram, index)
        if self.threshold < 1.0 and texts:
            self._lsh = self._lsh or MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
            for index, text in enumerate(texts, offset):
                self._lsh.insert(str(index), self._minhash(text))
        if self.embedding_model and texts:
            self._add_embeddings(texts)
        return self

    def _minhash(self, text: str):
        from datasketch import MinHash

        signature = MinHash(num_perm=self.num_perm, seed=1)
        for shingle in ngrams(text, 2) or {tuple(words(text))}:
            signature.update(" ".join(shingle).encode())
        return signature

    def _embed(self, texts: Sequence[str]):
        import numpy as np

        vectors = self._encoder.encode(list(texts), batch_size=self.embedding_batch, convert_to_numpy=True,
                                       normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _add_embeddings(self, texts: list[str]) -> None:
        import faiss
        from sentence_transformers import SentenceTransformer

        if self._encoder is None:
            import torch

            self._encoder = SentenceTransformer(self.embedding_model, device="cuda" if torch.cuda.is_available() else "cpu")
        vectors = self._embed(texts)
        if self._index is None:
            # Exact search: held-out sets are thousands of questions, and unit vectors make inner product the cosine.
            self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)

    def match(self, text: str, instruction: str | None = None) -> Match | None:
        """The cheap checks: an n-gram of `text` shared with a held-out text, or `instruction` a near-duplicate of one."""
        if self._banned:
            hits = [self._banned[gram] for gram in ngrams(text, self.ngram) if gram in self._banned]
            if hits:
                return Match(NGRAM, min(hits))
        if instruction is not None and self._lsh is not None:
            hits = self._lsh.query(self._minhash(instruction))
            if hits:
                return Match(NEAR_DUPLICATE, min(int(hit) for hit in hits))
        return None

    def semantic_matches(self, instructions: Sequence[str]) -> list[Match | None]:
        """The embedding check, batched: for each instruction, its nearest held-out question if the cosine
        similarity reaches embedding_threshold."""
        if not self.embeds or not instructions:
            return [None] * len(instructions)
        scores, indices = self._index.search(self._embed(instructions), 1)
        return [Match(SEMANTIC, int(index[0]), round(float(score[0]), 4)) if score[0] >= self.embedding_threshold else None
                for score, index in zip(scores, indices)]
