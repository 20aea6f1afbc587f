"""MoCo-v2 (He et al. 2020; Chen et al. 2020) with optional ReCo terms, in one short builder.

Query encoder = backbone + projection; key encoder = its momentum copy; a queue of past keys as
negatives. Under DDP keys are all-gathered before the queue update, so every rank's queue holds every
rank's keys; on GPUs the trainer synchronises BN (SyncBatchNorm), CPU ranks keep their own statistics.

With a pair graph (``set_partners``) and the batch's source rows, pairs join the loss one of two ways:
``multi``: queued keys of partner images are extra positives; ``inbatch``: the batch's own keys are
contrasted too, a query's positives are its key and the keys of its partners in the batch (fresh keys of
this step), and queued keys of partners leave the negatives.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from semipairs.dist import all_gather
from semipairs.errors import InvalidValueError
from semipairs.precision import full_precision
from training.heads import ProjectionHead
from training.losses import info_nce, multi_positive_nce, reco_global, reco_local, supcon
from training.losses.reco import cutmix
from training.momentum import update_momentum
from training.pair_graph import PairGraph


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, hidden_dim: int = 2048, queue_size: int = 4096,
                 momentum: float = 0.99, temperature: float = 0.2, reco_global_weight: float = 0.0,
                 reco_local_weight: float = 0.0, head_norm: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feat_dim, hidden_dim, dim, norm=head_norm)
        self.backbone_k = copy.deepcopy(backbone).requires_grad_(False)
        self.projector_k = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.reco_global_weight, self.reco_local_weight = reco_global_weight, reco_local_weight
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_rows", torch.full((queue_size,), -1, dtype=torch.long))  # source row of each key
        self.graph, self.pair_mode = PairGraph(), "multi"

    def set_partners(self, anchor: torch.Tensor, positive: torch.Tensor, num_rows: int, mode: str = "multi") -> None:
        """Pair edges (undirected) and how they join the loss: ``multi`` or ``inbatch`` (module docstring)."""
        if mode not in ("multi", "inbatch"):
            raise InvalidValueError(f"MoCo pair mode {mode!r}: use multi or inbatch")
        self.graph.set_edges(anchor, positive, num_rows)
        self.pair_mode = mode

    def partner_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, K) True where the queued key's image is a pair partner of the query's image."""
        return self.graph.mask(rows, self.queue_rows)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x).flatten(1)).float(), dim=1)

    @torch.no_grad()
    def encode_key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector_k(self.backbone_k(x).flatten(1)).float(), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        update_momentum(self.backbone, self.backbone_k, self.momentum)  # BN stats: the key encoder keeps its own
        update_momentum(self.projector, self.projector_k, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        rows = torch.full((len(keys),), -1, dtype=torch.long) if rows is None else rows.long()
        keys, rows = all_gather(keys), all_gather(rows.to(keys.device))
        size = len(self.queue)
        keys, rows = keys[-size:], rows[-size:]  # a batch larger than the queue: its newest keys fill it
        n, ptr = len(keys), int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size
        self.queue[idx] = keys
        self.queue_rows[idx] = rows
        self.queue_ptr.fill_((ptr + n) % size)

    def forward(self, view_q: torch.Tensor, view_k: torch.Tensor, weights: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss, parts, keys) for a batch of (query view, key view); the caller enqueues ``keys`` (with the
        query images' ``rows``) after the optimizer step. With partners set and ``rows`` given, queued keys
        of partner images are positives too. Encoders may run under bf16 autocast; the losses run in fp32."""
        q = self.encode(view_q)
        self.momentum_update()
        k = self.encode_key(view_k)
        mixed = cutmix(view_q) if self.reco_local_weight else None
        q_mix = self.encode(mixed[0]) if mixed is not None else None
        with full_precision(q.device.type):
            queue = self.queue.clone().detach()
            if self.graph.ready and rows is not None and self.pair_mode == "inbatch":
                own = self.graph.same_kind(rows).to(q.device)
                queued = self.partner_mask(rows).to(q.device)
                positive = torch.cat([own, torch.zeros_like(queued)], dim=1)
                valid = torch.cat([torch.ones_like(own), ~queued], dim=1)
                loss = supcon(q, torch.cat([k, queue]), positive, valid, self.temperature, weights)
                parts = {"inbatch_nce": float(loss.detach()), "batch_partners": float(own.sum(1).float().mean()) - 1.0,
                         "queued_partners_removed": float(queued.sum(1).float().mean())}
            elif self.graph.ready and rows is not None:
                mask = self.partner_mask(rows)
                loss = multi_positive_nce(q, k, queue, mask, self.temperature, weights)
                parts = {"multi_positive_nce": float(loss.detach()), "queued_partners": float(mask.sum(1).float().mean())}
            else:
                loss = info_nce(q, k, queue, self.temperature, weights)
                parts = {"info_nce": float(loss.detach())}
            if self.reco_global_weight:
                g = reco_global(q, k, queue)
                loss = loss + self.reco_global_weight * g
                parts["reco_global"] = float(g.detach())
            if mixed is not None:
                lo = reco_local(q_mix, k, mixed[1], mixed[2])
                loss = loss + self.reco_local_weight * lo
                parts["reco_local"] = float(lo.detach())
        return loss, parts, k
