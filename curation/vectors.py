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
from semipairs.vectors import BLOCK, normalise_rows_


class EmbeddingError(SemipairsError):
    """Embeddings that cannot be used: wrong row count or shape, no usable row at all."""


@dataclass
class Embeddings:
    """Rows in source order (L2-normalised once checked); ``ok`` is False for unreadable images."""

    vectors: np.ndarray
    ok: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)


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


def drop_degenerate(emb: Embeddings, keys: list[str]) -> int:
    """Rows holding NaN or inf, or all zeros (a constant image under ``pixels``), are skipped like unreadable
    images: ``ok`` False, listed in ``skipped`` with the reason. Returns how many; an error if none is left."""
    x, dropped = emb.vectors, 0
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        ok = emb.ok[start:start + BLOCK]
        finite = np.isfinite(block).all(axis=1)
        zero = finite & ~block.any(axis=1)
        for i in np.flatnonzero(ok & ~finite):
            emb.skipped.append(Skipped(keys[start + i], "embedding holds NaN or inf"))
        for i in np.flatnonzero(ok & zero):
            emb.skipped.append(Skipped(keys[start + i], "embedding is all zeros (a constant image?): no direction"))
        bad = ok & (~finite | zero)
        block[bad] = 0
        ok[bad] = False
        dropped += int(bad.sum())
    if len(x) and not emb.ok.any():
        raise EmbeddingError(f"no usable embedding: all {len(x)} rows are unreadable, NaN/inf or zero")
    return dropped


def normalise_(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (``semipairs.vectors.normalise_rows_``: safe for huge finite values)."""
    return normalise_rows_(x)
