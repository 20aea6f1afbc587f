"""SimCLR (Chen et al. 2020) with in-batch pair positives (SePP-ID's first setting).

Both views of every image go through one encoder (backbone + MoCo-v2's projection head); each view's
positives are the other view of its image and, when the batch carries its images' rows and a pair graph
is set, both views of every pair partner in the batch: SupCon's L_out over the pair graph restricted to
the batch. Every other view in the batch is a negative. No momentum encoder, no queue: positives get
gradient from the first step, which is what makes pairs pay at small budgets (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semipairs.errors import InvalidValueError
from semipairs.precision import full_precision
from training.heads import ProjectionHead
from training.losses import supcon
from training.pair_graph import PairGraph


def view_masks(rows: torch.Tensor | None, graph: PairGraph, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, valid) over the 2B views [view 1 of each image; view 2 of each image]."""
    same = torch.eye(b, dtype=torch.bool, device=device)
    if rows is not None and graph.ready:
        same = same | graph.same_kind(rows).to(device)
    positive = same.repeat(2, 2) & ~torch.eye(2 * b, dtype=torch.bool, device=device)
    return positive, ~torch.eye(2 * b, dtype=torch.bool, device=device)


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.2, head_norm: bool = False) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.projector = ProjectionHead(feat_dim, hidden_dim, dim, norm=head_norm)
        self.graph = PairGraph()

    def set_partners(self, anchor: torch.Tensor, positive: torch.Tensor, num_rows: int, mode: str = "inbatch") -> None:
        """Pair edges (undirected) whose views in the same batch are positives (the only mode SimCLR has)."""
        if mode != "inbatch":
            raise InvalidValueError(f"SimCLR pair mode {mode!r}: only inbatch (it has no queue)")
        self.graph.set_edges(anchor, positive, num_rows)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, weights: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], None]:
        """(loss, parts, None). Encoders may run under bf16 autocast; the loss runs in fp32. Under DDP each
        rank contrasts its own batch (its partners were planned into it)."""
        b = len(v1)
        z = self.projector(self.backbone(torch.cat([v1, v2])).flatten(1))
        with full_precision(z.device.type):
            z = F.normalize(z.float(), dim=1)
            positive, valid = view_masks(rows, self.graph, b, z.device)
            w = None if weights is None else weights.repeat(2)
            loss = supcon(z, z, positive, valid, self.temperature, w)
        partners = float(positive.sum(1).float().mean()) - 1.0
        return loss, {"nt_xent": float(loss.detach()), "batch_partners": partners}, None
