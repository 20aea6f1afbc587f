"""faiss index and batched kNN search: exact inner product up to ``exact_max`` vectors, an IVF factory
above it; on the GPUs faiss sees when it has them. Memory stays O(N*k): queries go in batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from semipairs.manifest import IndexInfo
from semipairs.vectors import without_self


@dataclass
class IndexConfig:
    metric: str = "cosine"  # cosine (inner product of unit vectors) or l2
    exact_max: int = 200_000
    nlist: int | None = None  # IVF lists; default 4*sqrt(N)
    nprobe: int = 32
    query_batch: int = 16_384
    gpu: bool | None = None  # None: use GPUs when faiss has them
    seed: int = 0


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def build_index(x: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, IndexInfo]:
    n, d = x.shape
    metric = faiss.METRIC_L2 if cfg.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if n <= cfg.exact_max:
        factory = "Flat"
        index = faiss.index_factory(d, factory, metric)
        extra = {}
    else:
        nlist = cfg.nlist or max(1, int(4 * math.sqrt(n)))
        factory = f"IVF{nlist},Flat"
        index = faiss.index_factory(d, factory, metric)
        rng = np.random.default_rng(cfg.seed)
        train = x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
        index.train(train)
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
        extra = {"nlist": nlist, "nprobe": cfg.nprobe, "train_size": len(train)}
    gpus = gpu_count() if cfg.gpu is not False else 0
    if gpus:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = gpus > 1  # split the database over the GPUs rather than copying it to each
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    index.add(x)
    info = IndexInfo(factory=factory, metric=cfg.metric, size=n, dim=d, gpus=gpus, **extra)
    return index, info


def search(index: faiss.Index, x: np.ndarray, k: int, batch: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every row of ``x`` (self excluded): (scores, ids), each N x k.

    Scores are similarities, higher is closer (negated squared distance under l2); self is dropped by
    ``semipairs.vectors.without_self``.
    """
    n = len(x)
    scores = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    l2 = index.metric_type == faiss.METRIC_L2
    for start in tqdm(range(0, n, batch), desc="search", unit="batch", disable=not progress):
        stop = min(n, start + batch)
        d, i = index.search(x[start:stop], k + 1)
        scores[start:stop], ids[start:stop] = without_self(-d if l2 else d, i, start, k)
    return scores, ids
