"""The momentum (EMA) update of a target network, shared by MoCo's key encoder and the GNN's BYOL target."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (buffers such as BN
    statistics stay the target's own)."""
    for p, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(momentum).add_(p.detach(), alpha=1 - momentum)
