"""Search split over torchrun ranks: rank 0 builds the index and writes it once, every rank reads it and
searches its slice of the queries (in the index's query order), rank 0 puts the slices back in row order.
Files in a run directory shared by the ranks (the embedding cache's filesystem) carry the index and the
results, so nothing large goes through the process group; the group only agrees on the directory and
waits at barriers."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import faiss
import numpy as np
import torch.distributed as dist

from curation.index import IndexConfig, build_index, query_order, scatter, search_rows
from curation.vectors import Rows
from semipairs.atomic import atomic_write
from semipairs.manifest import IndexInfo


def slice_of(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``start:stop`` of ``n`` queries that ``rank`` searches (contiguous, sizes differ by at most 1)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def search_over_ranks(rows: Rows, cfg: IndexConfig, k: int, work_root: Path, progress: bool
                      ) -> tuple[np.ndarray, np.ndarray, IndexInfo] | None:
    """(scores, ids, index info) for every row on rank 0, None on the other ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    box = [str(Path(work_root) / f"search-{uuid.uuid4().hex[:12]}") if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    work = Path(box[0])
    info_box: list = [None]
    if rank == 0:
        work.mkdir(parents=True)
        index, info = build_index(rows, cfg, progress)
        cpu = faiss.index_gpu_to_cpu(index) if info.gpus else index
        with atomic_write(work / "index.faiss") as f:
            faiss.write_index(cpu, faiss.PyCallbackIOWriter(f.write))
        info_box = [info.model_dump()]
    dist.broadcast_object_list(info_box, src=0)
    if rank != 0:  # IVF lists memory-mapped: the ranks of one machine share one copy in the page cache
        flags = faiss.IO_FLAG_MMAP if info_box[0].get("nlist") else 0
        index = faiss.read_index(str(work / "index.faiss"), flags)
        if info_box[0].get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = info_box[0]["nprobe"]
    order = query_order(index, len(rows))  # every rank derives the same order from the same index file
    start, stop = slice_of(len(rows), rank, world)
    mine = order[start:stop]
    scores, ids = search_rows(index, rows, k, cfg.query_batch, mine, progress and rank == 0, first=start)
    with atomic_write(work / f"part-{rank}.npz") as f:
        np.savez(f, rows=mine, scores=scores, ids=ids)
    dist.barrier()
    if rank != 0:
        dist.barrier()  # rank 0 removes the run directory after reading every part
        return None
    parts = []
    for r in range(world):
        with np.load(work / f"part-{r}.npz") as z:
            parts.append((z["rows"], z["scores"], z["ids"]))
    scores, ids = scatter(len(rows), k, parts)
    dist.barrier()
    shutil.rmtree(work, ignore_errors=True)
    return scores, ids, IndexInfo(**info_box[0])
