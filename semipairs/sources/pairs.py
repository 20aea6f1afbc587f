"""The images of a published pair dataset as an image source: what a version derived from it is built from.

An embedded version holds every image it pairs; a reference version holds keys only and reads its
images from the source it names (or the one passed in). Keys, and labels where the table has them,
come from the pair table, so nothing is decoded to list them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from semipairs.errors import SourceError
from semipairs.sources.base import ImageSource, SourceItem

if TYPE_CHECKING:
    from semipairs.dataset import PairDataset


@dataclass
class PairImages(ImageSource):
    """Keys of every image in ``dataset``'s pairs; ``read`` takes each from the shards (embedded) or from
    ``images`` (reference). A reference version without ``images`` lists keys and labels only."""

    dataset: PairDataset | None = None
    images: ImageSource | None = None
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _where: dict[str, tuple[int, str]] = field(default_factory=dict, init=False, repr=False)
    _labels: list[int | None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        t = self.dataset.table
        sides = [(t["anchor_key"], "anchor"), (t["positive_key"], "positive")]
        for keys, role in sides:
            for pid, key in zip(t["pair_id"].tolist(), keys.tolist()):
                self._where.setdefault(key, (int(pid), role))
        self._keys = list(self._where)
        if "anchor_label" in t and "positive_label" in t:
            label = {}
            for keys, role in sides:
                for key, lab in zip(keys.tolist(), t[f"{role}_label"].tolist()):
                    label.setdefault(key, None if pd.isna(lab) else int(lab))
            self._labels = [label[k] for k in self._keys]
            known = [v for v in self._labels if v is not None]
            self.classes = [str(i) for i in range(max(known, default=-1) + 1)]
        self._shards = None
        if self.dataset.manifest.layout == "embedded":
            from semipairs.shards import ShardIndex

            self._shards = ShardIndex([(self.dataset.path / f.path, f.samples or 0)
                                       for f in self.dataset.manifest.shard_files()])

    @property
    def has_images(self) -> bool:
        return self._shards is not None or (self.images is not None and self.images.has_images)

    def keys(self) -> list[str]:
        return self._keys

    def read(self, index: int) -> SourceItem:
        key = self._keys[index]
        label = self._labels[index] if self._labels is not None else None
        if self._shards is not None:
            data, ext = self._shards.read(*self._where[key])
            return SourceItem(key, data, ext, label)
        if self.images is None:
            raise SourceError(f"{self.dataset.path}: a 'reference' dataset holds no images; pass its source "
                              f"(e.g. --source {self.dataset.manifest.source.uri})")
        item = self.images.read_key(key)
        return SourceItem(key, item.data, item.ext, label)

    def read_pair(self, pair_id: int, role: str) -> SourceItem:
        """One side of one pair (``anchor`` or ``positive``): what a review page shows."""
        row = self.dataset.table.iloc[pair_id]
        return self.read(self.index_of()[row[f"{role}_key"]])

    def labels(self) -> list[int | None]:
        return list(self._labels) if self._labels is not None else [None] * len(self._keys)

    def fingerprint(self) -> str:
        return self.dataset.manifest.source.fingerprint
