"""The GNN encoder of the refinement phase and the two things that keep it O(N*k) in memory: neighbour
sampling for training mini-batches and layer-wise inference over all nodes in chunks.

Layers are torch_geometric's SAGEConv (refine's default), GCNConv or GATConv, 2 by default, with a jumping-knowledge
max over the layer outputs. GCN gets its symmetric normalisation precomputed on the *whole* graph and
passed as edge weights (sampled edges rescaled by degree / sampled count, an unbiased estimate of the full
sum), so a mini-batch and the full-graph inference compute the same function. torch_geometric's own
NeighborLoader needs the native pyg-lib or torch-sparse wheels, which are not published for every torch;
this sampler is plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semipairs.errors import InvalidValueError
from semipairs.extras import require_extra
from training.graphs import KnnGraph

CONVS = ("gcn", "sage", "gat")


@dataclass
class SubGraph:
    """Nodes ``n_id`` (the seeds first), local ``edge_index`` (2, E) source -> target and GCN edge weights."""

    n_id: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor


def gcn_norm_parts(graph: KnnGraph) -> torch.Tensor:
    """deg^-1/2 with one self loop per node: edge (u, v) weighs inv[u] * inv[v], a self loop inv[v]^2."""
    return (graph.degree().float() + 1.0).rsqrt()


def _in_edges(graph: KnnGraph, targets: torch.Tensor, fanout: int | None, gen: torch.Generator | None):
    """(sources, targets, scale) of up to ``fanout`` random in-edges per target (all of them when None)."""
    start, deg = graph.rowptr[targets], graph.degree()[targets]
    owner = torch.repeat_interleave(torch.arange(len(targets)), deg)
    offset = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
    scale = torch.ones(len(owner))
    if fanout is not None and len(owner) and int(deg.max()) > fanout:
        # Random rank within each target's list: sort by (owner, random key), keep rank < fanout.
        order = torch.argsort(owner.double() + torch.rand(len(owner), generator=gen, dtype=torch.float64) * 0.5)
        owner, offset = owner[order], offset[order]
        rank = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        keep = rank < fanout
        owner, offset = owner[keep], offset[keep]
        scale = (deg.float() / deg.clamp(max=fanout).float())[owner]
    return graph.col[start[owner] + offset], targets[owner], scale


def sample_subgraph(graph: KnnGraph, seeds: torch.Tensor, fanouts: list[int | None], inv_sqrt_deg: torch.Tensor,
                    gen: torch.Generator | None = None) -> SubGraph:
    """Hop-by-hop neighbour sampling from ``seeds``: hop h keeps up to ``fanouts[h]`` in-edges per frontier node."""
    local = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    nodes = [seeds]
    local[seeds] = torch.arange(len(seeds))
    count = len(seeds)
    frontier = seeds
    src_all, dst_all, w_all = [], [], []
    for fanout in fanouts:
        src, dst, scale = _in_edges(graph, frontier, fanout, gen)
        new = torch.unique(src[local[src] < 0])
        local[new] = torch.arange(count, count + len(new))
        count += len(new)
        nodes.append(new)
        src_all.append(src)
        dst_all.append(dst)
        w_all.append(inv_sqrt_deg[src] * inv_sqrt_deg[dst] * scale)
        frontier = new
    n_id = torch.cat(nodes)
    loops = torch.arange(len(n_id))
    edge_index = torch.cat([torch.stack([local[torch.cat(src_all)], local[torch.cat(dst_all)]]), torch.stack([loops, loops])], 1)
    weight = torch.cat([*w_all, inv_sqrt_deg[n_id] ** 2])
    return SubGraph(n_id, edge_index, weight)


class GNNEncoder(nn.Module):
    """``layers`` graph convolutions, PReLU after each, jumping-knowledge max over the layer outputs (and,
    with ``skip``, over a projection of the node's own features)."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, conv: str = "gcn", heads: int = 4,
                 skip: bool = True) -> None:
        super().__init__()
        pyg = require_extra("torch_geometric.nn", "graph")
        GATConv, GCNConv, SAGEConv = pyg.GATConv, pyg.GCNConv, pyg.SAGEConv  # noqa: N806 - the library's names

        if conv not in CONVS:
            raise InvalidValueError(f"conv must be one of {CONVS}, not {conv!r}")
        if layers < 1:
            raise InvalidValueError(f"layers must be >= 1, not {layers}")
        self.conv_kind = conv
        self.convs = nn.ModuleList()
        for i in range(layers):
            d = in_dim if i == 0 else hidden
            if conv == "gcn":
                self.convs.append(GCNConv(d, hidden, normalize=False, add_self_loops=False))
            elif conv == "sage":
                self.convs.append(SAGEConv(d, hidden))
            else:
                self.convs.append(GATConv(d, hidden // heads, heads=heads, add_self_loops=False))
        self.acts = nn.ModuleList(nn.PReLU(hidden) for _ in range(layers))
        # The node's own (projected) features join the jumping-knowledge max, so a node whose neighbours
        # are poor keeps its own signal: GCN mixes self and neighbours in one normalised sum.
        self.skip = nn.Sequential(nn.Linear(in_dim, hidden), nn.PReLU(hidden)) if skip else None

    def layer(self, i: int, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor) -> torch.Tensor:
        conv = self.convs[i]
        h = conv(x, edge_index, edge_weight) if self.conv_kind == "gcn" else conv(x, edge_index)
        return self.acts[i](h)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor) -> torch.Tensor:
        out = None if self.skip is None else self.skip(x)
        for i in range(len(self.convs)):
            x = self.layer(i, x, edge_index, edge_weight)
            out = x if out is None else torch.maximum(out, x)  # jumping knowledge: max over layers
        return out

    @torch.no_grad()
    def encode_all(self, graph: KnnGraph, x: torch.Tensor, inv_sqrt_deg: torch.Tensor, chunk: int = 16_384,
                   device: str = "cpu") -> torch.Tensor:
        """Every node's output, layer by layer over target chunks with their full in-neighbourhoods:
        memory O(N * (hidden + degree)), messages of one chunk at a time, never the whole graph's.
        The chunks' subgraphs are built once and serve every layer."""
        was = self.training
        self.eval()
        out = None
        if self.skip is not None:
            out = torch.cat([self.skip(x[s:s + chunk].to(device)).float().cpu() for s in range(0, len(x), chunk)])
        chunks = [torch.arange(s, min(s + chunk, graph.num_nodes)) for s in range(0, graph.num_nodes, chunk)]
        subs = [sample_subgraph(graph, targets, [None], inv_sqrt_deg) for targets in chunks]
        for i in range(len(self.convs)):
            nxt = None
            for targets, sub in zip(chunks, subs):
                h = self.layer(i, x[sub.n_id].to(device), sub.edge_index.to(device), sub.edge_weight.to(device))
                h = h[: len(targets)].float().cpu()
                if nxt is None:
                    nxt = torch.empty(graph.num_nodes, h.shape[1])
                nxt[targets] = h
            x = nxt
            out = x if out is None else torch.maximum(out, x)
        self.train(was)
        return out
