"""GloVe vectors and their precomputed nearest-neighbour matrix (the counter-fitted substitute).

TextAttack's embedding swaps read ``nn_matrix[i, 1:K+1]``: the K nearest words of word ``i`` by
cosine similarity, the word itself in column 0. Computing it for a 50k vocabulary takes seconds,
so it is cached as ``<cache>/embeddings/glove-<vocab>-k<K>.npz``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

WORD_RE = re.compile(r"^[a-z][a-z'-]*$")
MAX_NEIGHBOURS = 50
"""Columns of the cached matrix besides the word itself: the largest K a profile asks for."""


def read_glove(vectors: Path, index: Path | None, vocab_size: int) -> tuple[list[str], np.ndarray]:
    """The ``vocab_size`` most frequent plain words (GloVe files are frequency-ordered) and vectors."""
    words: list[str] = []
    if index is not None:
        import pandas as pd

        all_words = pd.read_parquet(index).iloc[:, 0].astype(str).tolist()
        keep = [i for i, w in enumerate(all_words) if WORD_RE.match(w)][:vocab_size]
        matrix = np.load(vectors, mmap_mode="r")
        return [all_words[i] for i in keep], np.asarray(matrix[keep], dtype=np.float32)
    vecs = []
    with open(vectors, encoding="utf-8") as f:
        for line in f:
            word, _, rest = line.rstrip("\n").partition(" ")
            if WORD_RE.match(word):
                words.append(word)
                vecs.append(np.array(rest.split(), dtype=np.float32))
                if len(words) == vocab_size:
                    break
    return words, np.stack(vecs)


def nearest_neighbours(matrix: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """(V, k+1) indices of each row's nearest rows by cosine, the row itself first."""
    emb = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    emb = torch.nn.functional.normalize(emb, dim=1)  # (V, D)
    out = np.empty((emb.shape[0], k + 1), dtype=np.int32)
    for start in range(0, emb.shape[0], chunk):
        sims = emb[start:start + chunk] @ emb.T  # (C, V)
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = 2.0  # the word itself ranks first even among duplicate vectors
        out[start:start + chunk] = sims.topk(k + 1, dim=1).indices.numpy()
    return out


def glove_neighbours(vectors: Path, index: Path | None, vocab_size: int, cache_dir: Path,
                     k: int = MAX_NEIGHBOURS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, vectors (V, D), nn (V, k+1)), computed once and cached under ``cache_dir``."""
    target = Path(cache_dir) / "embeddings" / f"glove-{Path(vectors).stem}-{vocab_size}-k{k}.npz"
    if target.is_file():
        with np.load(target, allow_pickle=False) as z:
            return z["words"].tolist(), z["vectors"], z["nn"]
    words, matrix = read_glove(Path(vectors), Path(index) if index else None, vocab_size)
    nn = nearest_neighbours(matrix, min(k, len(words) - 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, words=np.array(words), vectors=matrix, nn=nn)
    tmp.replace(target)
    return words, matrix, nn
