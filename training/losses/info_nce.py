"""InfoNCE with a negative queue (MoCo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """q, k: (B, D) normalised; queue: (K, D) normalised negatives. Positive logit first, cross-entropy;
    ``weights`` (B,) weigh each sample's term (a weighted mean)."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    losses = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device), reduction="none")
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()
