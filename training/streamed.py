"""Training views: an epoch is every source image as two views of itself plus the semantic pairs as a
view of the anchor and a view of its positive (SePP-ID). ``pair_ratio`` sets the share of pairs used.

Pairs come from the dataset's shards (embedded layout) or are resolved by key against ``--data``
(reference layout). Every reader yields the same quota of pairs per epoch (cycling its shards if it
holds fewer), so DDP ranks never wait on each other at a collective. Work is split over DDP ranks and
DataLoader workers like ``to_torch``; every sample says where it came from (``kind`` SAME_IMAGE or PAIR,
``index`` = source index or pair id, ``skipped`` = unreadable images passed over since the reader's
previous sample, so the trainer counts them). This is the streamed path; ``decoded_batches.py`` is the decoded one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from semipairs.dataset import PairDataset
from semipairs.dist import reader_slot
from semipairs.errors import InvalidValueError
from semipairs.sources.base import ImageSource, read_or_skip
from semipairs.torch_data import decode_image
from training.decoded_batches import PAIR, SAME_IMAGE

View = Callable[[Any], torch.Tensor]


def check_pair_keys(pairs: PairDataset, source: ImageSource) -> None:
    """A reference-layout pair dataset must name only keys of ``source`` (embedded pairs carry their images)."""
    if pairs.manifest.layout != "reference":
        return
    missing = source.unknown_keys(pairs.table["anchor_key"].tolist() + pairs.table["positive_key"].tolist())
    if missing:
        raise InvalidValueError(f"pairs {pairs.path} name keys absent from {source.spec}: {missing[:5]}")


class SePPViews(IterableDataset):
    def __init__(self, source: ImageSource, view: View, pairs: PairDataset | None = None, pair_ratio: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= pair_ratio <= 1.0:
            raise InvalidValueError(f"pair_ratio must be within [0, 1], got {pair_ratio}")
        self.source, self.view = source, view
        self.pairs, self.pair_ratio, self.seed, self.epoch = pairs, pair_ratio, seed, 0
        self.num_pairs = int(round(len(pairs) * pair_ratio)) if pairs is not None else 0
        if pairs is not None:
            check_pair_keys(pairs, source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source) + self.num_pairs

    def _pair_stream(self, rng: np.random.Generator, me: int, readers: int,
                     record: Callable[[str, str], object]) -> Iterator[tuple[Any, Any, int]]:
        assert self.pairs is not None
        if self.pairs.manifest.layout == "reference":
            ids = np.sort(rng.permutation(len(self.pairs))[: self.num_pairs])[me::readers]
            anchors, positives = self.pairs.table["anchor_key"].to_numpy(), self.pairs.table["positive_key"].to_numpy()
            for i in rng.permutation(ids):
                a = read_or_skip(lambda k=anchors[i]: self.source.read_key(k).image(), anchors[i], record)
                p = read_or_skip(lambda k=positives[i]: self.source.read_key(k).image(), positives[i], record)
                if a is not None and p is not None:
                    yield a, p, int(i)
            return
        # Shards split unevenly over readers; each reader yields its fixed quota (the caller stops it), cycling
        # its own shards when it holds fewer pairs, so every DDP rank fills the same number of batches.
        take = min(1.0, self.num_pairs / max(1, len(self.pairs)))
        while True:
            got = 0
            for anchor, positive, meta in self.pairs.to_torch(decode=False):
                if take >= 1.0 or rng.random() < take:
                    a = read_or_skip(lambda x=anchor: decode_image(x), f"pair {meta['pair_id']} anchor", record)
                    p = read_or_skip(lambda x=positive: decode_image(x), f"pair {meta['pair_id']} positive", record)
                    if a is not None and p is not None:
                        got += 1
                        yield a, p, int(meta["pair_id"])
            if not got:  # nothing (readable) in this reader's shards: its quota ends here, never a busy loop
                return

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
        """The samples, one held back so that the images skipped after the last one are counted on it too."""
        skipped: list[tuple[str, str]] = []
        last = None
        for sample in self._samples(skipped):
            if last is not None:
                yield last
            last = sample
        if last is not None:
            last[2]["skipped"] += len(skipped)
            yield last

    def _samples(self, skipped: list[tuple[str, str]]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
        me, readers = reader_slot()
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))[me::readers]
        rng = np.random.default_rng([self.seed, self.epoch, me])
        record = lambda key, why: skipped.append((key, why))  # noqa: E731 - emptied after each sample
        pairs = self._pair_stream(rng, me, readers, record) if self.pairs is not None and self.num_pairs else iter(())
        n_src, n_pair = len(order), -(-self.num_pairs // readers)
        s = 0
        while s < n_src or n_pair > 0:
            if n_pair > 0 and (s >= n_src or rng.random() < n_pair / (n_pair + n_src - s)):
                n_pair -= 1
                item = next(pairs, None)
                if item is None:
                    n_pair = 0
                    continue
                a, p, pid = item
                yield self.view(a), self.view(p), {"kind": PAIR, "index": pid, "skipped": len(skipped)}
            else:
                i = int(order[s])
                s += 1
                img = read_or_skip(lambda i=i: self.source.read(i).image(), self.source.keys()[i], record)
                if img is None:
                    continue
                yield self.view(img), self.view(img), {"kind": SAME_IMAGE, "index": i, "skipped": len(skipped)}
            skipped.clear()
