"""BYOL's regression loss (Grill et al. 2020), used by the GNN refinement between graph views."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, stopgrad(z)), averaged over the batch (0 when aligned, 4 when opposite)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()
