"""ReCo relation losses, plug-ins for MoCo.

- global: the query's similarity distribution over the queue (student, temperature 0.1) is pulled towards
  that of a weak view's key (target, temperature 0.04, no gradient);
- local: a CutMix of two images must embed at the area-weighted mix of their key embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reco_global(q: torch.Tensor, k_weak: torch.Tensor, queue: torch.Tensor, t_student: float = 0.1,
                t_target: float = 0.04) -> torch.Tensor:
    """Cross-entropy between target and student relation distributions over the queue."""
    target = F.softmax(k_weak.detach() @ queue.T / t_target, dim=1)
    log_student = F.log_softmax(q @ queue.T / t_student, dim=1)
    return -(target * log_student).sum(dim=1).mean()


def cutmix(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix of each image with the next in the batch (roll by 1); returns (mixed, partner index, lam)."""
    b, _, h, w = x.shape
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    partner = torch.roll(torch.arange(b, device=x.device), -1)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, partner, lam


def reco_local(q_mix: torch.Tensor, k: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """1 - cos(q_mix, normalise(lam k + (1 - lam) k[partner])), no gradient through the keys."""
    target = F.normalize(lam * k.detach() + (1 - lam) * k.detach()[partner], dim=1)
    return (1 - F.cosine_similarity(q_mix, target, dim=1)).mean()
