"""``hf:REPO[@REV][:SPLIT][#image=COL,label=COL]``: an image dataset on the Hugging Face Hub, via ``datasets``.

``datasets`` downloads the split once into its Arrow cache, which is memory-mapped, so a large dataset
costs disk, not RAM. Random access is needed (pair shards read each partner image by key), which is
why this source does not stream. Images are read as their stored encoded bytes (``Image(decode=False)``)
and copied into shards unchanged. The image column is the first ``Image`` feature and the label the first
``ClassLabel`` unless named after ``#``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from semipairs.errors import InvalidValueError, SourceError
from semipairs.sources.base import ImageSource, SourceItem, normalise_ext, spec_options

_SPEC = re.compile(r"^hf:(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^:#@\s]+))?(?::(?P<split>[\w.-]+))?(?:#(?P<opts>.*))?$")


def parse_hf_spec(spec: str) -> dict[str, Any]:
    """``hf:OWNER/NAME[@REV][:SPLIT][#image=COL,label=COL]`` -> its parts; a bad spec names the grammar."""
    m = _SPEC.match(spec)
    if not m:
        raise SourceError(f"{spec!r}: use hf:OWNER/NAME[@REVISION][:SPLIT][#image=COLUMN,label=COLUMN]")
    opts = spec_options(spec, m["opts"], ("image", "label"))
    return {"repo_id": m["repo"], "revision": m["rev"], "split": m["split"] or "train",
            "image_column": opts.get("image"), "label_column": opts.get("label")}


@dataclass
class HubImageSource(ImageSource):
    """Keys are ``SPLIT/ROW`` (row number zero-padded): stable for a pinned revision."""

    repo_id: str = ""
    revision: str | None = None
    split: str = "train"
    image_column: str | None = None
    label_column: str | None = None
    _ds: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import datasets
        from datasets.exceptions import DatasetNotFoundError

        try:
            ds = datasets.load_dataset(self.repo_id, revision=self.revision, split=self.split)
        except DatasetNotFoundError as exc:
            raise SourceError(f"{self.spec}: {exc}") from None
        except ValueError as exc:  # datasets' message for a missing split lists the splits it has
            raise SourceError(f"{self.spec}: {exc}") from None
        features = ds.features
        images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        col = self.image_column or (images[0] if images else None)
        if col is None or col not in features:
            raise SourceError(f"{self.spec}: no image column {'named ' + repr(col) if col else 'found'}; "
                              f"columns: {list(features)} (name one with #image=COLUMN)")
        lab = self.label_column or (labels[0] if labels else None)
        if lab is not None and lab not in features:
            raise SourceError(f"{self.spec}: no label column {lab!r}; columns: {list(features)}")
        if isinstance(features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
        self.image_column, self.label_column = col, lab
        if lab is not None:
            feat = features[lab]
            self.classes = list(feat.names) if isinstance(feat, datasets.ClassLabel) else [
                str(v) for v in sorted(set(ds[lab]))]
        self._ds = ds.select_columns([c for c in (col, lab) if c])
        self._width = max(6, len(str(len(ds))))

    def keys(self) -> list[str]:
        return [f"{self.split}/{i:0{self._width}d}" for i in range(len(self._ds))]

    def __len__(self) -> int:
        return len(self._ds)

    def read(self, index: int) -> SourceItem:
        row = self._ds[index]
        value = row[self.image_column]
        data = value.get("bytes") if isinstance(value, dict) else None
        path = value.get("path") if isinstance(value, dict) else None
        if data is None and path:
            with open(path, "rb") as f:
                data = f.read()
        if data is None:
            raise InvalidValueError(f"row {index} of column {self.image_column!r} holds no image bytes")
        ext = path.rsplit(".", 1)[-1] if path and "." in path else None
        if not ext:
            with Image.open(io.BytesIO(data)) as im:
                ext = (im.format or "png").lower()
        return SourceItem(f"{self.split}/{index:0{self._width}d}", data, normalise_ext(ext), self._label(row))

    def _label(self, row: dict) -> int | None:
        if self.label_column is None:
            return None
        v = row[self.label_column]
        return int(v) if isinstance(v, int) else self.classes.index(str(v))  # type: ignore[union-attr]

    def labels(self) -> list[int | None]:
        if self.label_column is None:
            return [None] * len(self._ds)
        return [self._label({self.label_column: v}) for v in self._ds[self.label_column]]

    def fingerprint(self) -> str:
        return f"hf:{self.repo_id}@{self.revision or 'main'}:{self.split}:{self._ds._fingerprint}"
