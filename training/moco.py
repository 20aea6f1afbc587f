"""MoCo-v2 (He et al. 2020; Chen et al. 2020) with optional ReCo terms, in one short builder.

Query encoder = backbone + projection; key encoder = its momentum copy; a queue of past keys as
negatives. Under DDP keys are all-gathered before the queue update, so every rank's queue holds every
rank's keys; BN is synchronised by the trainer (SyncBatchNorm).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.heads import ProjectionHead
from training.losses import info_nce, reco_global, reco_local
from training.losses.reco import cutmix


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, hidden_dim: int = 2048, queue_size: int = 4096,
                 momentum: float = 0.99, temperature: float = 0.2, reco_global_weight: float = 0.0,
                 reco_local_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feat_dim, hidden_dim, dim)
        self.backbone_k = copy.deepcopy(backbone).requires_grad_(False)
        self.projector_k = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.reco_global_weight, self.reco_local_weight = reco_global_weight, reco_local_weight
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x).flatten(1)), dim=1)

    @torch.no_grad()
    def encode_key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector_k(self.backbone_k(x).flatten(1)), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        for online, target in ((self.backbone, self.backbone_k), (self.projector, self.projector_k)):
            for p, pk in zip(online.parameters(), target.parameters()):  # BN stats: the key encoder keeps its own
                pk.mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = all_gather(keys)
        n, size = len(keys), len(self.queue)
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size
        self.queue[idx] = keys[-size:] if n > size else keys
        self.queue_ptr.fill_((ptr + n) % size)

    def forward(self, view_q: torch.Tensor, view_k: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss, parts, keys) for a batch of (query view, key view); call ``step_end`` after the optimizer."""
        q = self.encode(view_q)
        self.momentum_update()
        k = self.encode_key(view_k)
        queue = self.queue.clone().detach()
        loss = info_nce(q, k, queue, self.temperature)
        parts = {"info_nce": float(loss.detach())}
        if self.reco_global_weight:
            g = reco_global(q, k, queue)
            loss = loss + self.reco_global_weight * g
            parts["reco_global"] = float(g.detach())
        if self.reco_local_weight:
            mixed, partner, lam = cutmix(view_q)
            lo = reco_local(self.encode(mixed), k, partner, lam)
            loss = loss + self.reco_local_weight * lo
            parts["reco_local"] = float(lo.detach())
        return loss, parts, k
