"""The pair graph as a lookup table on the model's device: is image ``a`` a known partner of image ``b``?

Pairs are undirected (a pair says both images show the same kind of thing). Edges are kept as sorted
codes ``a * n + b`` so a (B, K) mask of any rows against any rows is one ``searchsorted``, never an
N x N matrix. Rows of -1 (a queued key whose image is unknown) match nothing. ``components`` closes a
batch's links transitively (WCL's weak labels).
"""

from __future__ import annotations

import torch
from torch import nn


class PairGraph(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("codes", None, persistent=False)
        self.num_rows = 0

    @property
    def ready(self) -> bool:
        return self.codes is not None and len(self.codes) > 0

    def set_edges(self, anchor: torch.Tensor, positive: torch.Tensor, num_rows: int) -> None:
        a, b = torch.cat([anchor, positive]).long(), torch.cat([positive, anchor]).long()
        self.codes, self.num_rows = torch.unique(a * num_rows + b), num_rows

    def mask(self, rows_q: torch.Tensor, rows_k: torch.Tensor) -> torch.Tensor:
        """(len(rows_q), len(rows_k)) bool: True where the two rows are pair partners."""
        rows_q, rows_k = rows_q.to(self.codes.device).long(), rows_k.to(self.codes.device).long()
        codes = rows_q[:, None] * self.num_rows + rows_k[None, :]
        at = torch.searchsorted(self.codes, codes).clamp_(max=len(self.codes) - 1)
        return (self.codes[at] == codes) & (rows_q[:, None] >= 0) & (rows_k[None, :] >= 0)

    def same_kind(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, B) bool over a batch's images: the same image (also one drawn twice) or known partners."""
        rows = rows.to(self.codes.device).long()
        return (rows[:, None] == rows[None, :]) | self.mask(rows, rows)


def components(linked: torch.Tensor) -> torch.Tensor:
    """(B, B) bool, True where two of a batch's images are in one connected component of ``linked`` (a
    symmetric (B, B) bool of direct links): the reach matrix squared until it stops growing (log B products)."""
    reach = linked | torch.eye(len(linked), dtype=torch.bool, device=linked.device)
    while True:
        grown = (reach.float() @ reach.float()) > 0
        if torch.equal(grown, reach):
            return reach
        reach = grown
