"""faiss index chosen by size and memory budget (as autofaiss does), built and searched in row chunks, with
its recall@k against exact search measured on sampled queries.

The choice: exact (``Flat``) while the collection is small enough that exact search is cheap; ``IVF,Flat``
while the float32 vectors fit the budget; ``IVF,PQ`` above, its code size picked to fit. The coarse
quantizer trains on a seeded sample. ``IndexConfig.factory`` and ``nprobe`` override the choice. Memory
stays O(index + N*k): vectors are added and queries searched chunk by chunk from ``curation.vectors.Rows``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from curation.vectors import Rows, as_rows
from semipairs.arrays import without_self
from semipairs.errors import SemipairsError
from semipairs.manifest import IndexInfo

DEFAULT_NPROBE = 16
ADD_CHUNK = 65_536


class IndexBuildError(SemipairsError):
    """A faiss factory string or setting that cannot index these vectors."""


@dataclass
class IndexConfig:
    metric: str = "cosine"  # cosine (inner product of unit vectors) or l2
    factory: str | None = None  # a faiss index_factory string; None: chosen by size and budget
    exact_max: int = 200_000  # exact search up to this many vectors
    nlist: int | None = None  # IVF lists when chosen here; default 4*sqrt(N), at most N/39
    nprobe: int | None = None  # IVF lists visited per query; default DEFAULT_NPROBE
    budget_bytes: int | None = None  # what the index's vectors may take; None: no limit (IVF,Flat above exact_max)
    train_size: int | None = None  # vectors the quantizer trains on; default 64 per list
    recall_queries: int = 1000  # sampled queries for recall@k against exact search (0: not measured)
    query_batch: int = 16_384
    gpu: bool | None = None  # None: use GPUs when faiss has them
    seed: int = 0


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def pq_bytes(d: int, n: int, budget: int) -> int:
    """PQ code bytes per vector: the largest divisor of ``d`` up to d/4 whose codes (+ 8-byte ids) fit."""
    fits = [m for m in range(1, d // 4 + 1) if d % m == 0 and n * (m + 8) <= budget]
    if not fits:
        raise IndexBuildError(f"{n} vectors do not fit an index budget of {budget / 2**30:.2f} GB even as 1-byte PQ codes; "
                          "raise --index-budget-gb")
    return max(fits)


def choose_factory(n: int, d: int, cfg: IndexConfig) -> str:
    """The faiss factory string for ``n`` vectors of ``d`` dims under ``cfg`` (its ``factory`` when given)."""
    if cfg.factory:
        return cfg.factory
    if n <= cfg.exact_max:
        return "Flat"
    nlist = cfg.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training vectors a list
    if cfg.budget_bytes is None or n * (d * 4 + 8) <= cfg.budget_bytes:
        return f"IVF{nlist},Flat"
    return f"IVF{nlist},PQ{pq_bytes(d, n, cfg.budget_bytes)}"


def _make(factory: str, d: int, metric: int) -> faiss.Index:
    try:
        return faiss.index_factory(d, factory, metric)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected"
        raise IndexBuildError(f"index factory {factory!r} for {d}-dim vectors: {first}") from None


def build_index(x: np.ndarray | Rows, cfg: IndexConfig, progress: bool = False) -> tuple[faiss.Index, IndexInfo]:
    """An index over every row of ``x`` (a normalised array, or ``Rows`` read chunk by chunk), trained on a
    seeded sample when the factory needs training; ``IndexInfo`` records what was built."""
    rows = as_rows(x)
    n, d = len(rows), rows.dim
    metric = faiss.METRIC_L2 if cfg.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    factory = choose_factory(n, d, cfg)
    index = _make(factory, d, metric)
    extra: dict = {}
    if not index.is_trained:
        ivf = _ivf(index)
        want = cfg.train_size or (64 * ivf.nlist if ivf is not None else 65_536)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(n, size=min(n, want), replace=False))
        try:
            index.train(rows.take(sample))
        except RuntimeError as exc:
            raise IndexBuildError(f"index {factory!r} cannot train on {len(sample)} vectors: "
                                  f"{str(exc).strip().splitlines()[-1]}") from None
        extra["train_size"] = len(sample)
    if _ivf(index) is not None:
        extra["nlist"] = _ivf(index).nlist
        extra["nprobe"] = set_nprobe(index, cfg.nprobe or DEFAULT_NPROBE)
    gpus = gpu_count() if cfg.gpu is not False else 0
    if gpus:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = gpus > 1  # split the database over the GPUs rather than copying it to each
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    for _, chunk in tqdm(rows.chunks(ADD_CHUNK), total=-(-n // ADD_CHUNK), desc="index", unit="chunk",
                         disable=not progress):
        index.add(chunk)
    info = IndexInfo(factory=factory, metric=cfg.metric, size=n, dim=d, gpus=gpus,
                     bytes_per_vector=bytes_per_vector(index, d), **extra)
    return index, info


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_nprobe(index: faiss.Index, nprobe: int) -> int:
    """Lists visited per query (capped at nlist); returns the value set."""
    ivf = _ivf(index)
    ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))
    return int(ivf.nprobe)


def bytes_per_vector(index: faiss.Index, d: int) -> int:
    """Memory one vector takes in the index: its code, plus its 8-byte id in an IVF list."""
    ivf = _ivf(index)
    if ivf is not None:
        return int(ivf.code_size) + 8
    try:
        return int(index.sa_code_size())
    except RuntimeError:  # an index without a standalone code (HNSW, GPU): the float32 vector, at least
        return 4 * d


def query_order(index: faiss.Index, n: int) -> np.ndarray:
    """The order to search the base's own rows in: inverted-list order for an IVF index (consecutive queries
    then probe mostly the same lists, which stay in cache instead of streaming from RAM for every query),
    row order otherwise."""
    ivf = _ivf(index) if index.ntotal == n else None
    if ivf is None or not hasattr(ivf, "invlists") or ivf.invlists is None:
        return np.arange(n)
    inv = ivf.invlists
    order = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy() for i in range(ivf.nlist) if inv.list_size(i)]
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    return order if len(order) == n else np.arange(n)


def _list_vectors(index: faiss.Index, d: int):
    """For an ``IVF,Flat`` index, a function giving the vectors at positions ``a:b`` of ``query_order`` straight
    from the inverted lists (they hold the added float32 rows): queries in list order need no scattered reads
    of the embedding files. None for other indexes."""
    ivf = _ivf(index)
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if not isinstance(ivf, faiss.IndexIVFFlat) or ivf.code_size != 4 * d:
        return None
    inv = ivf.invlists
    sizes = np.array([inv.list_size(i) for i in range(ivf.nlist)], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def fetch(a: int, b: int) -> np.ndarray:
        out = []
        for lst in range(int(np.searchsorted(starts, a, side="right")) - 1, ivf.nlist):
            if starts[lst] >= b:
                break
            if not sizes[lst]:
                continue
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), int(sizes[lst]) * ivf.code_size)
            vecs = np.frombuffer(codes, dtype=np.float32).reshape(-1, d)
            out.append(vecs[max(0, a - starts[lst]):b - starts[lst]])
        return np.concatenate(out)  # a copy: faiss keeps its lists
    return fetch


def search_rows(index: faiss.Index, x: np.ndarray | Rows, k: int, batch: int, queries: np.ndarray,
                progress: bool = True, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours (self excluded) of the given rows of ``x``, in the order given: (scores, ids), each
    len(queries) x k. Scores are similarities, higher is closer (negated squared distance under l2).

    ``first``: ``queries`` are ``query_order(index)[first:first + len(queries)]``, so an ``IVF,Flat`` index
    hands out the query vectors itself."""
    rows = as_rows(x)
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    l2 = index.metric_type == faiss.METRIC_L2
    fetch = _list_vectors(index, rows.dim) if first is not None else None
    bar = tqdm(total=len(queries), desc="search", unit="query", disable=not progress, unit_scale=True)
    for s in range(0, len(queries), batch):
        want = queries[s:s + batch]
        if fetch is not None:
            q = fetch(first + s, first + s + len(want))
        elif len(want) and want[-1] - want[0] == len(want) - 1 and (np.diff(want) == 1).all():
            q = rows.chunk(int(want[0]), int(want[-1]) + 1)
        else:
            q = rows.take(want)
        d, i = index.search(q, k + 1)
        scores[s:s + len(want)], ids[s:s + len(want)] = without_self(-d if l2 else d, i, want, k)
        bar.update(len(want))
    bar.close()
    return scores, ids


def search(index: faiss.Index, x: np.ndarray | Rows, k: int, batch: int, progress: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every row of ``x`` (self excluded): (scores, ids), each N x k in row order,
    searched in ``query_order``."""
    rows = as_rows(x)
    order = query_order(index, len(rows))
    scores, ids = search_rows(index, rows, k, batch, order, progress, first=0)
    return scatter(len(rows), k, [(order, scores, ids)])


def scatter(n: int, k: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Results searched in some order, (query rows, scores, ids) per part, back into N x k arrays in row order."""
    scores = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    for rows, s, i in parts:
        scores[rows], ids[rows] = s, i
    return scores, ids


def exact_neighbours(rows: Rows, queries: np.ndarray, k: int, metric: str, chunk: int = ADD_CHUNK) -> np.ndarray:
    """Ids of the exact top-``k`` (self excluded) of the given query rows, streaming over the base in chunks:
    memory is O(chunk * d), never the whole matrix."""
    q = rows.take(queries)
    heap = faiss.ResultHeap(len(q), k + 1, keep_max=metric != "l2")
    for first, base in rows.chunks(chunk):
        if metric == "l2":
            d, i = faiss.knn(q, base, min(k + 1, len(base)), metric=faiss.METRIC_L2)
        else:
            d, i = faiss.knn(q, base, min(k + 1, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, i + first, -1))
    heap.finalize()
    return without_self(heap.D, heap.I, queries, k)[1]


def measure_recall(rows: Rows, ids: np.ndarray, k: int, metric: str, queries: int, seed: int = 0,
                   first: int = 0) -> dict:
    """recall@k of the search results ``ids`` (rows ``first``.. of the queries) against exact search on
    ``queries`` sampled rows: the share of the true k neighbours the index found."""
    n = len(ids)
    sample = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, queries), replace=False))
    truth = exact_neighbours(rows, sample + first, k, metric)
    found = ids[sample]
    hits = int(((found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)).any(axis=2).sum())
    return {"recall_at_k": round(hits / (k * len(sample)), 4), "recall_k": k, "recall_queries": int(len(sample))}
