"""Projection and prediction heads: small modules kept apart from the methods that use them."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Module):
    """MoCo-v2's 2-layer MLP (hidden -> ReLU -> out); ``norm``: BN after the hidden layer, as BYOL and MSF have it
    (methods without negatives lean on it against collapse)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, norm: bool = False) -> None:
        super().__init__()
        bn = [nn.BatchNorm1d(hidden_dim)] if norm else []
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), *bn, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x):
        return self.net(x)


class SimSiamProjector(nn.Module):
    """SimSiam's 3-layer projector with BN, the last BN without affine."""

    def __init__(self, in_dim: int, out_dim: int = 2048) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
            nn.Linear(out_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
            nn.Linear(out_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False),
        )

    def forward(self, x):
        return self.net(x)


class PredictionHead(nn.Module):
    """SimSiam / BYOL predictor: bottleneck MLP (dim -> hidden -> dim)."""

    def __init__(self, dim: int = 2048, hidden_dim: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x):
        return self.net(x)
