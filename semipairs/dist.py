"""Ranks, readers and process groups: the one home of torch.distributed logic shared by curation and training.

``rank_world`` says which process this is; ``reader_slot`` which reader (DDP rank x DataLoader worker)
is reading; ``distributed`` joins the torchrun group for a command and leaves it; ``all_gather``
concatenates a tensor from every rank (itself alone outside a group).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, else what torchrun's environment says, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def reader_slot() -> tuple[int, int]:
    """(this reader's index, number of readers) over DDP ranks x DataLoader workers."""
    rank, world = rank_world()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPUs, gloo on CPU); (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """(rank, world) for a command's body; the group it joined is destroyed on the way out.

    Only a group this call created is destroyed, so a caller that set one up keeps using it. Leaving
    explicitly matters: a rank that exits with a live gloo group can abort its peer mid-teardown.
    """
    already = torch.distributed.is_initialized()
    rank, world = init_distributed()  # the one place that decides whether a group is needed
    try:
        yield rank, world
    finally:
        if not already and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every rank, concatenated in rank order (``x`` itself outside a group of several)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a group of several): one decision for all ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
