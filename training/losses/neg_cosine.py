"""SimSiam's symmetric negative cosine with stop-gradient on the targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, stopgrad(z)), averaged over the batch (minimum -1)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
