"""Contrastive loss with several positives per anchor (SupCon's L_out, Khosla et al. 2020).

Each anchor's positives are pulled up together, averaged in log space, against every *valid* entry of
the contrast set. With one positive per anchor and every other entry valid it is NT-Xent (SimCLR) or,
over a queue, InfoNCE. The caller says what counts: the other view of the same image, the views of known
pair partners in the batch, and which entries are excluded (the anchor itself, partners left in a queue).
"""

from __future__ import annotations

import torch


def supcon(anchors: torch.Tensor, contrast: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None,
           temperature: float = 0.2, weights: torch.Tensor | None = None) -> torch.Tensor:
    """anchors (A, D), contrast (C, D), both normalised; positive, valid: (A, C) bool. Entries that are not
    valid are neither positive nor in the denominator. Every anchor needs at least one valid positive."""
    logits = anchors @ contrast.T / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
        positive = positive & valid
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    count = positive.sum(1)
    if bool((count == 0).any()):
        raise ValueError("supcon: an anchor has no positive")
    losses = -torch.where(positive, log_prob, 0.0).sum(1) / count
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()
