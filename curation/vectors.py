"""Embedding matrices without torch: loading bring-your-own ``.npy`` files, checks, normalisation.

Kept free of torch so mining from precomputed embeddings stays light; every step works in place or in
row blocks, so peak memory stays near one copy of the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semipairs.errors import SemipairsError
from semipairs.sources.base import ImageSource, Skipped

BLOCK = 65_536


class EmbeddingError(SemipairsError):
    """Embeddings that cannot be used: wrong row count, NaN or inf, zero vectors."""


@dataclass
class Embeddings:
    """Rows in source order (L2-normalised once checked); ``ok`` is False for unreadable images."""

    vectors: np.ndarray
    ok: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    cache_dir: Path | None = None


def load_embeddings(path: str | Path, source: ImageSource) -> Embeddings:
    """Bring-your-own embeddings (``.npy``, rows in source order), read once into float32."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: embeddings file not found")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise EmbeddingError(f"{path}: not a plain .npy array: {exc}") from None
    if x.ndim != 2:
        raise EmbeddingError(f"{path}: expected a 2-D array (rows x dim), got shape {x.shape}")
    if x.shape[0] != len(source):
        raise EmbeddingError(f"{path}: {x.shape[0]} rows but source {source.spec} has {len(source)} images")
    keys_file = path.with_suffix(".keys.txt")  # written beside refined embeddings: rows must match source keys
    if keys_file.is_file():
        saved = keys_file.read_text(encoding="utf-8").splitlines()
        mismatch = next((i for i, (a, b) in enumerate(zip(saved, source.keys())) if a != b), None)
        if len(saved) != len(source) or mismatch is not None:
            where = f"row {mismatch}: {saved[mismatch]!r} vs {source.keys()[mismatch]!r}" if mismatch is not None else \
                f"{len(saved)} keys vs {len(source)} images"
            raise EmbeddingError(f"{keys_file}: rows are not in the order of source {source.spec} ({where})")
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), BLOCK):
        out[start:start + BLOCK] = x[start:start + BLOCK]
    return Embeddings(out, np.ones(len(out), bool))


def check_finite(emb: Embeddings, keys: list[str], where: str) -> None:
    """NaN, inf or all-zero rows (among readable images) are an error naming the first key."""
    x = emb.vectors
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            i = start + int(np.flatnonzero(bad)[0])
            raise EmbeddingError(f"{where}: row(s) hold NaN or inf, first row {i} (key {keys[i]!r})")
        zero = emb.ok[start:start + BLOCK] & ~block.any(axis=1)
        if zero.any():
            i = start + int(np.flatnonzero(zero)[0])
            raise EmbeddingError(f"{where}: zero row(s) cannot be normalised, first row {i} (key {keys[i]!r})")


def normalise_(x: np.ndarray) -> np.ndarray:
    """L2-normalise float32 rows in place, block by block; returns ``x``."""
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return x
