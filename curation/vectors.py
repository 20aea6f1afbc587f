"""Embedding matrices without torch: bring-your-own ``.npy`` files, checks, normalisation, and ``Rows``, the
view the index and the search read through.

Kept free of torch so mining from precomputed embeddings stays light. Nothing here copies a whole matrix:
files stay on disk and are read on demand (``semipairs.arrays.Parts``, float16 or float32), checks run in
row blocks, and ``Rows`` hands out normalised float32 chunks, so peak memory follows the faiss index, not
N x d in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semipairs.arrays import BLOCK, Parts, degenerate_rows, normalise_rows_
from semipairs.errors import SemipairsError
from semipairs.sources.base import ImageSource, Skipped


class EmbeddingError(SemipairsError):
    """Embeddings that cannot be used: wrong row count or shape, no usable row at all."""


@dataclass
class Embeddings:
    """Rows in source order (L2-normalised once checked); ``ok`` is False for unreadable images."""

    vectors: np.ndarray | Parts  # Parts: rows read from .npy files on demand
    ok: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)


def load_embeddings(path: str | Path, source: ImageSource) -> Embeddings:
    """Bring-your-own embeddings (``.npy``, rows in source order), read on demand as stored (float16 stays
    float16 on disk); ``Rows`` normalises each chunk as the index reads it."""
    path = Path(path)
    x = Parts([path], EmbeddingError)  # the file checked once, then read on demand
    if len(x) != len(source):
        raise EmbeddingError(f"{path}: {len(x)} rows but source {source.spec} has {len(source)} images")
    keys_file = path.with_suffix(".keys.txt")  # written beside refined embeddings: rows must match source keys
    if keys_file.is_file():
        saved = keys_file.read_text(encoding="utf-8").splitlines()
        mismatch = next((i for i, (a, b) in enumerate(zip(saved, source.keys())) if a != b), None)
        if len(saved) != len(source) or mismatch is not None:
            where = f"row {mismatch}: {saved[mismatch]!r} vs {source.keys()[mismatch]!r}" if mismatch is not None else \
                f"{len(saved)} keys vs {len(source)} images"
            raise EmbeddingError(f"{keys_file}: rows are not in the order of source {source.spec} ({where})")
    return Embeddings(x, np.ones(len(x), bool))


def drop_degenerate(emb: Embeddings, keys: list[str]) -> int:
    """Rows holding NaN or inf, or all zeros (a constant image under ``pixels``), are skipped like unreadable
    images: ``ok`` False, listed in ``skipped`` with the reason. Returns how many; an error if none is left.
    Reads the rows block by block and never writes them, so a read-only memory map works."""
    x, dropped = emb.vectors, 0
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        ok = emb.ok[start:start + BLOCK]
        nonfinite, zero = degenerate_rows(block)
        for i in np.flatnonzero(ok & nonfinite):
            emb.skipped.append(Skipped(keys[start + i], "embedding holds NaN or inf"))
        for i in np.flatnonzero(ok & zero):
            emb.skipped.append(Skipped(keys[start + i], "embedding is all zeros (a constant image?): no direction"))
        bad = ok & (nonfinite | zero)
        ok[bad] = False
        dropped += int(bad.sum())
    if len(x) and not emb.ok.any():
        raise EmbeddingError(f"no usable embedding: all {len(x)} rows are unreadable, NaN/inf or zero")
    return dropped


def normalise_(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (``semipairs.arrays.normalise_rows_``: safe for huge finite values)."""
    return normalise_rows_(x)


@dataclass
class Rows:
    """The usable rows of an embedding matrix as the index sees them: row ``i`` here is row ``keep[i]`` of
    ``data`` (all rows when ``keep`` is None), handed out as L2-normalised float32 chunks.

    ``data`` is an array or ``Parts`` (.npy files read on demand), float16 or float32, never copied whole:
    the index adds and the search queries chunk by chunk."""

    data: np.ndarray
    keep: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data) if self.keep is None else len(self.keep)

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (positions here, any order) as a normalised float32 array."""
        src = idx if self.keep is None else self.keep[idx]
        return normalise_rows_(np.asarray(self.data[src], dtype=np.float32))  # fancy indexing copies

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a normalised float32 array (a slice of a memory map reads only those rows)."""
        if self.keep is None:
            return normalise_rows_(np.array(self.data[start:stop], dtype=np.float32))
        return self.take(np.arange(start, stop))

    def chunks(self, size: int, start: int = 0, stop: int | None = None):
        """(first row, chunk) over rows ``start:stop`` in chunks of ``size``."""
        stop = len(self) if stop is None else stop
        for s in range(start, stop, size):
            yield s, self.chunk(s, min(stop, s + size))


def as_rows(x: np.ndarray | Rows) -> Rows:
    return x if isinstance(x, Rows) else Rows(x)
