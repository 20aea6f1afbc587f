"""kNN graphs over embeddings for GNN refinement (GraphNNCLR): built with faiss, symmetrised, stored as CSR.

Memory is O(N*k): faiss searches in row blocks and only the neighbour lists are kept, never an N x N
matrix. Held-out nodes (a test split) are appended after the training nodes and linked to their nearest
*training* nodes in both directions, so they receive messages without changing who trains with whom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from semipairs.arrays import normalise_rows_, without_self
from semipairs.errors import SemipairsError


class GraphError(SemipairsError):
    """A graph that cannot be built: k out of range, empty inputs, mismatched dimensions."""


@dataclass
class KnnGraph:
    """Undirected graph as CSR in-adjacency: the neighbours of node v are ``col[rowptr[v]:rowptr[v+1]]``.

    Nodes ``0..num_train-1`` are training nodes, the rest held-out."""

    rowptr: torch.Tensor
    col: torch.Tensor
    num_train: int

    @property
    def num_nodes(self) -> int:
        return len(self.rowptr) - 1

    @property
    def num_edges(self) -> int:
        return len(self.col)

    def degree(self) -> torch.Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def edge_index(self) -> torch.Tensor:
        """(2, E) source -> target, torch_geometric's convention."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), self.degree())
        return torch.stack([self.col, dst])


def _search(base: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool, block: int = 65_536) -> np.ndarray:
    """Indices of the k nearest base rows (inner product on L2-normalised rows = cosine), block by block."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    extra = 1 if exclude_self else 0
    out = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), block):
        d, idx = index.search(queries[s:s + block], k + extra)
        out[s:s + block] = without_self(d, idx, s, k)[1] if exclude_self else idx
    return out


def _normalised(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise GraphError(f"{name}: need a non-empty (nodes x dim) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GraphError(f"{name}: embeddings hold NaN or inf")
    return normalise_rows_(x.copy())


def build_knn_graph(train: np.ndarray | torch.Tensor, k: int, heldout: np.ndarray | torch.Tensor | None = None,
                    heldout_k: int | None = None, self_loops: bool = False) -> KnnGraph:
    """Cosine kNN graph of ``train`` (k neighbours each, then symmetrised), plus held-out nodes linked both
    ways to their ``heldout_k`` (default k) nearest training nodes. Self loops only when asked (the GCN of
    refinement adds its own, with their own weight)."""
    xt = _normalised(train, "training embeddings")
    n = len(xt)
    if not 1 <= k < n:
        raise GraphError(f"k={k} must be at least 1 and below the number of training nodes ({n})")
    nbr = _search(xt, xt, k, exclude_self=True)
    src = [np.repeat(np.arange(n), k), nbr.ravel()]
    total = n
    if heldout is not None:
        xh = _normalised(heldout, "held-out embeddings")
        if xh.shape[1] != xt.shape[1]:
            raise GraphError(f"held-out embeddings have dim {xh.shape[1]}, training ones {xt.shape[1]}")
        hk = k if heldout_k is None else heldout_k
        if not 1 <= hk <= n:
            raise GraphError(f"heldout_k={hk} must be between 1 and the number of training nodes ({n})")
        hn = _search(xt, xh, hk, exclude_self=False)
        src[0] = np.concatenate([src[0], np.repeat(np.arange(n, n + len(xh)), hk)])
        src[1] = np.concatenate([src[1], hn.ravel()])
        total += len(xh)
    a, b = torch.from_numpy(src[0]), torch.from_numpy(src[1])
    # Symmetrise (both directions), drop self loops and duplicates, sort by target -> CSR.
    s, d = torch.cat([a, b]), torch.cat([b, a])
    if self_loops:
        loops = torch.arange(total)
        s, d = torch.cat([s, loops]), torch.cat([d, loops])
    keep = (s != d) | self_loops
    key = torch.unique(d[keep] * total + s[keep])  # sorted by target, then source
    dst, col = key // total, key % total
    rowptr = torch.zeros(total + 1, dtype=torch.long)
    rowptr[1:] = torch.cumsum(torch.bincount(dst, minlength=total), 0)
    return KnnGraph(rowptr, col, n)
