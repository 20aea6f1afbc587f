"""Weak labels from the pair graph in a second head (WCL, Zheng et al. 2021), beside SimCLR's instance head.

One backbone, two projection heads. The instance head keeps plain NT-Xent (each view's only positive is the
other view of its image), so pair noise never bends instance discrimination; the graph head runs SupCon with
the batch's connected components as labels: images joined through pair links inside the batch, transitively.
WCL finds its links as each image's nearest neighbour in the batch (graph-head features); without pairs so
does this, with pairs the curated links replace them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semipairs.precision import full_precision
from training.heads import ProjectionHead
from training.losses import supcon
from training.pair_graph import components
from training.simclr import SimCLR, view_masks


def nearest_links(g: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: each image linked to its nearest other image (WCL's 1-NN graph), symmetrised."""
    sim = g @ g.T - 2 * torch.eye(len(g), device=g.device)
    link = F.one_hot(sim.argmax(1), len(g)).bool()
    return link | link.T


class WCL(SimCLR):
    def __init__(self, backbone: torch.nn.Module, feat_dim: int, dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.2, graph_weight: float = 1.0, head_norm: bool = False) -> None:
        super().__init__(backbone, feat_dim, dim, hidden_dim, temperature, head_norm)
        self.graph_head, self.graph_weight = ProjectionHead(feat_dim, hidden_dim, dim, norm=head_norm), graph_weight

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, weights: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], None]:
        b = len(v1)
        h = self.backbone(torch.cat([v1, v2])).flatten(1)
        z, g = self.projector(h), self.graph_head(h)
        with full_precision(z.device.type):
            z, g = F.normalize(z.float(), dim=1), F.normalize(g.float(), dim=1)
            twin, valid = view_masks(None, self.graph, b, z.device)
            w = None if weights is None else weights.repeat(2)
            instance = supcon(z, z, twin, valid, self.temperature, w)
            parts = {}
            if rows is not None and self.graph.ready:
                linked = self.graph.same_kind(rows).to(z.device)
                parts["batch_partners"] = float(linked.sum(1).float().mean()) - 1.0
            else:
                with torch.no_grad():
                    linked = nearest_links(g[:b].detach()) | nearest_links(g[b:].detach())
            same = components(linked)
            graph = supcon(g, g, same.repeat(2, 2) & valid, valid, self.temperature, w)
            loss = instance + self.graph_weight * graph
        return loss, {"nt_xent": float(instance.detach()), "graph_supcon": float(graph.detach()),
                      "component_size": float(same.sum(1).float().mean()), **parts}, None
