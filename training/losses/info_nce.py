"""InfoNCE with a negative queue (MoCo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """q, k: (B, D) normalised; queue: (K, D) normalised negatives. Positive logit first, cross-entropy."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
