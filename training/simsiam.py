"""SimSiam (Chen & He 2021): projector + predictor, stop-gradient, symmetric negative cosine."""

from __future__ import annotations

import torch
from torch import nn

from semipairs.precision import full_precision
from training.heads import PredictionHead, SimSiamProjector
from training.losses import negative_cosine


class SimSiam(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 2048, pred_dim: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = SimSiamProjector(feat_dim, dim)
        self.predictor = PredictionHead(dim, pred_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weights: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], None]:
        """Encoders may run under bf16 autocast; the loss runs in fp32. ``rows`` is accepted for a common
        signature with MoCo (SimSiam has no queue to find partners in)."""
        z1, z2 = self.projector(self.backbone(x1).flatten(1)), self.projector(self.backbone(x2).flatten(1))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with full_precision(x1.device.type):
            p1, p2, z1, z2 = p1.float(), p2.float(), z1.float(), z2.float()
            loss = 0.5 * (negative_cosine(p1, z2, weights) + negative_cosine(p2, z1, weights))
        return loss, {"neg_cosine": float(loss.detach())}, None
