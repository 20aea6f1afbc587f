"""The torch view of a pair dataset: an IterableDataset of (anchor, positive, meta).

Work is split over DataLoader workers and DDP ranks. With at least one shard per reader, each reader
takes whole shards (``shards[i::readers]``); with fewer shards than readers, every reader scans the
shards and keeps every ``readers``-th pair, so no rank sits idle at a collective and none hangs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from semipairs.dist import reader_slot
from semipairs.shards import iter_shard, split_sample
from semipairs.sources.base import ImageSource, to_rgb

Transform = Callable[[Image.Image], Any]


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return to_rgb(im)


class PairIterable(IterableDataset):
    """Pairs from embedded shards (``source=None``) or, for the reference layout, from a source.

    ``decode=False`` yields the encoded bytes as stored. ``transform`` applies to each decoded image.
    """

    def __init__(
        self,
        shards: list[tuple[str, int]],
        rows: list[dict[str, Any]] | None = None,
        source: ImageSource | None = None,
        transform: Transform | None = None,
        decode: bool = True,
    ) -> None:
        super().__init__()
        self.shards, self.rows, self.source = shards, rows, source
        self.transform, self.decode = transform, decode

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else sum(n for _, n in self.shards)

    def _image(self, data: bytes) -> Any:
        if not self.decode:
            return data
        im = decode_image(data)
        return self.transform(im) if self.transform is not None else im

    def _raw(self) -> Iterator[tuple[bytes, bytes, dict[str, Any]]]:
        me, readers = reader_slot()
        if self.rows is not None:
            assert self.source is not None
            for row in self.rows[me::readers]:
                a = self.source.read_key(row["anchor_key"]).data
                p = self.source.read_key(row["positive_key"]).data
                yield a, p, row
            return
        if len(self.shards) >= readers:
            for path, n in self.shards[me::readers]:
                for sample in iter_shard(path, n):
                    yield split_sample(sample)
            return
        i = 0
        for path, n in self.shards:
            for sample in iter_shard(path, n):
                if i % readers == me:
                    yield split_sample(sample)
                i += 1

    def __iter__(self) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
        for a, p, meta in self._raw():
            yield self._image(a), self._image(p), meta


def collate_pairs(batch: list[tuple[Any, Any, dict[str, Any]]]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Stack tensor images; keep meta as a list of dicts (labels may be null)."""
    anchors, positives, metas = zip(*batch)
    stack = (lambda xs: torch.stack(list(xs))) if isinstance(anchors[0], torch.Tensor) else list
    return stack(anchors), stack(positives), list(metas)
