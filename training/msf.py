"""Mean shift to pair partners (MSF, Koohpayegani et al. 2021), with the pairs as the neighbourhood.

MoCo's query and momentum key encoders and queue (with each key's source row), a BN projection head and a
predictor, and no negatives: the query's prediction is regressed to the *mean* of its targets, its own
momentum key plus the keys of its pair partners, fresh ones in the batch and queued ones. MSF itself takes the
k nearest queued keys as the neighbourhood; here the curated pairs are. Without pairs it is BYOL (MSF, k=1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semipairs.errors import InvalidValueError
from semipairs.precision import full_precision
from training.heads import ProjectionHead
from training.moco import MoCo


class MSF(MoCo):
    def __init__(self, backbone: torch.nn.Module, feat_dim: int, dim: int = 128, hidden_dim: int = 2048,
                 queue_size: int = 4096, momentum: float = 0.99) -> None:
        super().__init__(backbone, feat_dim, dim, hidden_dim, queue_size, momentum, head_norm=True)
        self.predictor = ProjectionHead(dim, hidden_dim, dim, norm=True)
        self.pair_mode = "inbatch"

    def set_partners(self, anchor: torch.Tensor, positive: torch.Tensor, num_rows: int, mode: str = "inbatch") -> None:
        if mode != "inbatch":
            raise InvalidValueError(f"MSF pair mode {mode!r}: only inbatch (its targets are the partners' keys)")
        super().set_partners(anchor, positive, num_rows, "inbatch")

    def forward(self, view_q: torch.Tensor, view_k: torch.Tensor, weights: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss, parts, keys); the caller enqueues ``keys`` with ``rows`` after the step (as for MoCo)."""
        p = self.predictor(self.projector(self.backbone(view_q).flatten(1)))
        self.momentum_update()
        k = self.encode_key(view_k)
        with full_precision(p.device.type):
            p = F.normalize(p.float(), dim=1)
            if self.graph.ready and rows is not None:
                own = self.graph.same_kind(rows).to(p.device)  # the image itself and its partners in the batch
                queued = self.partner_mask(rows).to(p.device)
                target = torch.cat([own, queued], dim=1).float()
                cos = (p @ torch.cat([k, self.queue.clone().detach()]).T * target).sum(1) / target.sum(1)
                parts = {"batch_partners": float(own.sum(1).float().mean()) - 1.0,
                         "queued_partners": float(queued.sum(1).float().mean())}
            else:
                cos, parts = (p * k).sum(1), {}
            per = 2 - 2 * cos  # the mean squared distance to the targets, up to their own spread (constant in p)
            loss = per.mean() if weights is None else (per * weights).sum() / weights.sum()
        return loss, {"mean_shift": float(loss.detach()), **parts}, k
