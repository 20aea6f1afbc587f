"""InfoNCE with several positives per query (SupCon's L_out form, over MoCo's queue).

A query's positives are its own key and every queued key whose image is a pair partner of the query's
image: each is pulled up, the rest of the queue pushed down. With one positive (no partner queued) it
is exactly ``info_nce``. Same-kind images that are not known partners stay negatives, as in MoCo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, partner_mask: torch.Tensor,
                       temperature: float = 0.2, weights: torch.Tensor | None = None) -> torch.Tensor:
    """q, k: (B, D); queue: (K, D); partner_mask: (B, K) bool, True where queue[j] is a partner of q[i]."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / temperature
    log_prob = F.log_softmax(logits, dim=1)
    pos = torch.cat([torch.ones(len(q), 1, dtype=torch.bool, device=q.device), partner_mask], dim=1)
    losses = -(log_prob * pos).sum(1) / pos.sum(1)
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()
