"""Row normalisation shared by curation (mining) and training (kNN graphs): one rule, one place."""

from __future__ import annotations

import numpy as np

BLOCK = 65_536


def normalise_rows_(x: np.ndarray) -> np.ndarray:
    """L2-normalise float rows in place, block by block; returns ``x``.

    Each row is first divided by its largest absolute value, so rows of huge finite values (1e37)
    do not overflow the norm into inf and collapse to zero; all-zero rows stay zero.
    """
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        block /= np.maximum(np.abs(block).max(axis=1, keepdims=True), np.finfo(block.dtype).tiny)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return x


def without_self(scores: np.ndarray, ids: np.ndarray, first: int | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query from its own k+1 search results (queries are rows ``first``, ``first + 1``, ... of
    the base, or the rows an array ``first`` lists). The one rule for "search excluding self": the query's
    own entry goes wherever it came back; where it did not (exact duplicates can tie it out of the list),
    the last result goes instead."""
    query = np.arange(first, first + len(ids)) if np.isscalar(first) else np.asarray(first)
    own = ids == query[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(ids)), drop] = False
    return scores[keep].reshape(-1, k), ids[keep].reshape(-1, k)
