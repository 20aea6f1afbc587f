"""Batches of row indices over a decoded source (``semipairs.decoded``): the fast path of the trainer.

An epoch is planned as index arrays, never as per-image Python work: every readable image as a view
of itself, plus semantic pairs used the way ``pair_mode`` says:

- ``extra`` (SePP-ID): each chosen pair is one more sample, a view of the anchor against a view of its
  positive; an epoch grows by ``pair_ratio * num_pairs`` samples.
- ``swap`` (offline NNCLR / MSF): no extra samples; an image that has pair partners sees, with
  probability ``swap_prob``, the view of a random partner as its key instead of its own second view.
- ``multi`` (MoCo only): no extra samples and no swaps; the batch carries each image's row, and the
  loss counts every queued key of a partner image as one more positive (``losses.multi_positive``).
- ``inbatch`` (pair-aware batches): half of each batch are anchors (every image once an epoch), the other
  half one random partner of each (an image without partners brings a random image instead); both views
  of every image, and the loss takes partners found in the batch as positives (``losses.supcon``).

Pairs are undirected for ``swap`` (a pair says both images show the same kind of thing). A sample's
``kind`` is ``SAME_IMAGE`` or ``PAIR``; ``index`` is its source row or pair id. Ranks take equal slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from semipairs.errors import InvalidValueError

SAME_IMAGE, PAIR = 0, 1
PAIR_MODES = ("extra", "swap", "multi", "inbatch")


@dataclass(frozen=True)
class PairRows:
    """Pairs resolved to rows of the decoded array (both layouts resolve by key)."""

    anchor: np.ndarray
    positive: np.ndarray
    pair_id: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor)

    def partners(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR adjacency of the undirected pair graph over ``n`` rows: (offsets, neighbour rows)."""
        a = np.concatenate([self.anchor, self.positive])
        b = np.concatenate([self.positive, self.anchor])
        order = np.argsort(a, kind="stable")
        offsets = np.zeros(n + 1, np.int64)
        np.add.at(offsets, a + 1, 1)
        return np.cumsum(offsets), b[order]


@dataclass
class Batch:
    rows_a: np.ndarray
    rows_b: np.ndarray
    kind: np.ndarray
    index: np.ndarray


def resolve_pairs(table, index_of: dict[str, int], ok: np.ndarray) -> PairRows:
    """Rows of each pair's anchor and positive; pairs touching an unreadable image are dropped."""
    a = np.fromiter((index_of[k] for k in table["anchor_key"]), np.int64, len(table))
    p = np.fromiter((index_of[k] for k in table["positive_key"]), np.int64, len(table))
    keep = ok[a] & ok[p]
    return PairRows(a[keep], p[keep], table["pair_id"].to_numpy(np.int64)[keep])


def plan_epoch(ok: np.ndarray, pairs: PairRows | None, *, seed: int, epoch: int, rank: int, world: int, batch_size: int,
               steps: int, mode: str = "extra", pair_ratio: float = 1.0, swap_prob: float = 0.5) -> Iterator[Batch]:
    """``steps`` batches of this rank's share of the epoch (the same number on every rank)."""
    if mode not in PAIR_MODES:
        raise InvalidValueError(f"pair mode {mode!r}: use one of {', '.join(PAIR_MODES)}")
    rng = np.random.default_rng([seed, epoch])
    rows = np.flatnonzero(ok)
    a, b = rows.copy(), rows.copy()
    kind, index = np.full(len(rows), SAME_IMAGE, np.int8), rows.copy()
    if pairs is not None and len(pairs) and mode == "extra":
        take = np.sort(rng.permutation(len(pairs))[: int(round(len(pairs) * pair_ratio))])
        a, b = np.concatenate([a, pairs.anchor[take]]), np.concatenate([b, pairs.positive[take]])
        kind = np.concatenate([kind, np.full(len(take), PAIR, np.int8)])
        index = np.concatenate([index, pairs.pair_id[take]])
    elif pairs is not None and len(pairs) and mode == "swap":
        offsets, nbrs = pairs.partners(len(ok))
        degree = offsets[rows + 1] - offsets[rows]
        swap = (degree > 0) & (rng.random(len(rows)) < swap_prob * pair_ratio)
        b[swap] = _random_partner(offsets, nbrs, rows[swap], rng)
        kind[swap] = PAIR
    if pairs is not None and len(pairs) and mode == "inbatch":
        yield from _inbatch(rows, pairs, len(ok), rng, rank, world, batch_size, steps)
        return
    order = rng.permutation(len(a))[rank::world]
    for s in range(steps):
        sel = order[s * batch_size:(s + 1) * batch_size]
        yield Batch(a[sel], b[sel], kind[sel], index[sel])


def _random_partner(offsets: np.ndarray, nbrs: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn partner of each row (every row has at least one) from the CSR pair graph."""
    degree = offsets[rows + 1] - offsets[rows]
    return nbrs[offsets[rows] + (rng.random(len(rows)) * degree).astype(np.int64)]


def _inbatch(rows: np.ndarray, pairs: PairRows, n: int, rng: np.random.Generator, rank: int, world: int,
             batch_size: int, steps: int) -> Iterator[Batch]:
    """Batches of ``batch_size // 2`` anchors followed by one partner each (``kind`` PAIR where it is one)."""
    offsets, nbrs = pairs.partners(n)
    anchors = rng.permutation(rows)[rank::world]
    half = batch_size // 2
    for s in range(steps):
        a = anchors[s * half:(s + 1) * half]
        degree = offsets[a + 1] - offsets[a]
        has = degree > 0
        partner = rng.choice(rows, size=len(a))  # stand-ins for anchors without partners
        partner[has] = _random_partner(offsets, nbrs, a[has], rng)
        fill = rng.choice(rows, size=batch_size - 2 * len(a))  # an odd batch size: one plain image more
        batch = np.concatenate([a, partner, fill])
        kind = np.concatenate([np.zeros(len(a), np.int8), has.astype(np.int8), np.zeros(len(fill), np.int8)]) * PAIR
        yield Batch(batch, batch, kind, batch)


def samples_per_epoch(ok: np.ndarray, pairs: PairRows | None, mode: str, pair_ratio: float) -> int:
    """Samples an epoch plans (``inbatch``: every image once as an anchor, each with a partner: twice as many)."""
    if pairs is not None and len(pairs) and mode == "inbatch":  # as plan_epoch: no pairs, a plain epoch
        return 2 * int(ok.sum())
    extra = int(round(len(pairs) * pair_ratio)) if pairs is not None and mode == "extra" else 0
    return int(ok.sum()) + extra
