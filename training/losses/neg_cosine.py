"""SimSiam's symmetric negative cosine with stop-gradient on the targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """-cos(p, stopgrad(z)), averaged over the batch (minimum -1); ``weights`` (B,) give a weighted mean."""
    cos = F.cosine_similarity(p, z.detach(), dim=1)
    return -(cos.mean() if weights is None else (cos * weights).sum() / weights.sum())
