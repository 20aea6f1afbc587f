"""Row helpers shared by curation (mining) and training (kNN graphs): one rule, one place. Normalisation,
"search excluding self", and ``Parts``: ``.npy`` files read as one matrix without keeping it in memory."""

from __future__ import annotations

import mmap
from pathlib import Path

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


def degenerate_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(holds NaN or inf, all zeros) per row: the two kinds of row with no direction to search by."""
    finite = np.isfinite(x).all(axis=1)
    return ~finite, finite & ~x.any(axis=1)


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


def open_npy(path: Path, error: type[Exception] = ValueError, where: str = "") -> np.ndarray:
    """A 2-D float16/float32 ``.npy`` memory-mapped read-only; else ``error`` naming the file (after ``where``)."""
    if not Path(path).is_file():
        raise error(f"{where}{path}: embeddings file not found")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise error(f"{where}{path} is not a plain .npy array: {exc}") from None
    if x.ndim != 2 or x.dtype.kind != "f":
        raise error(f"{where}{path} must be a 2-D float array (rows x dim), got {x.dtype} {x.shape}")
    return x


class Parts:
    """One or more 2-D ``.npy`` files (float16/float32) seen as one N x d array, read on demand.

    Each read maps the file briefly and copies only the rows asked for (a slice, or sorted positions), so the
    pages of a matrix larger than RAM never pile up in this process's resident memory as a long-lived memory
    map's would: peak memory follows the chunk being read."""

    def __init__(self, paths: list[Path], error: type[Exception] = ValueError, where: str = "") -> None:
        """Each file is checked once here (``open_npy``: ``error`` names the bad one); parts must share d."""
        self.paths = [Path(p) for p in paths]
        heads = [open_npy(p, error, where) for p in self.paths]
        if len({h.shape[1] for h in heads}) > 1:
            raise error(f"{where}parts differ in dimension {sorted({h.shape[1] for h in heads})}")
        self.offsets = np.cumsum([0] + [len(h) for h in heads])
        self.shape = (int(self.offsets[-1]), int(heads[0].shape[1]))
        self.dtype = np.result_type(*(h.dtype for h in heads))
        self.ndim = 2
        del heads

    def __len__(self) -> int:
        return self.shape[0]

    def _part(self, i: int, scattered: bool = False) -> np.ndarray:
        a = np.load(self.paths[i], mmap_mode="r", allow_pickle=False)
        mm = getattr(a, "_mmap", None)
        if scattered and mm is not None and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)  # no read-ahead: scattered rows would map (and count) most of the file
        return a

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            out = np.empty((max(0, stop - start), self.shape[1]), self.dtype)
            for i, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
                a, b = max(start, lo), min(stop, hi)
                if a < b:
                    out[a - start:b - start] = self._part(i)[a - lo:b - lo]
            return out
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        for i in np.unique(part):
            at = np.flatnonzero(part == i)
            local = idx[at] - self.offsets[i]
            order = np.argsort(local, kind="stable")  # file order: each page is touched once, forwards
            out[at[order]] = self._part(int(i), scattered=True)[local[order]]
        return out
