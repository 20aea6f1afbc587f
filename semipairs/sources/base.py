"""What every image source gives: stable keys, encoded bytes, an optional label.

Sources never decode more than a check needs: pair shards copy the encoded bytes as they are, so a
JPEG stays the same JPEG. A corrupt or unreadable image is skipped, counted and listed in ``skipped``
(it ends up in the manifest), never fatal.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: its key, encoded bytes, file extension and label (or None)."""

    key: str
    data: bytes
    ext: str
    label: int | None = None

    def image(self, mode: str = "RGB") -> Image.Image:
        with Image.open(io.BytesIO(self.data)) as im:
            return im.convert(mode)


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


def normalise_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)


def check_image(data: bytes) -> None:
    """Raise if ``data`` is not a decodable image.

    JPEGs are decoded at reduced scale (``draft``), which still reads the whole entropy-coded stream,
    so truncation is caught at a fraction of a full decode's cost.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()


@dataclass
class ImageSource(ABC):
    """Base of all sources. Subclasses list their keys and read one image by position.

    ``skipped`` fills as images are read; ``num_images`` counts the readable ones seen so far.
    """

    spec: str
    classes: list[str] | None = None
    skipped: list[Skipped] = field(default_factory=list, init=False)

    @property
    def has_labels(self) -> bool:
        return self.classes is not None

    @abstractmethod
    def keys(self) -> list[str]:
        """All candidate keys in the source's stable order (corrupt ones included)."""

    @abstractmethod
    def read(self, index: int) -> SourceItem:
        """The item at ``index`` of ``keys()``; raises OSError/ValueError when unreadable."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes when the source's content changes (cheap, without reading images)."""

    def __len__(self) -> int:
        return len(self.keys())

    def read_checked(self, index: int, check: bool = True) -> SourceItem | None:
        """The item at ``index`` or None (recorded in ``skipped``) when it cannot be read or decoded."""
        key = self.keys()[index]
        try:
            item = self.read(index)
            if check:
                check_image(item.data)
        except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped, by contract
            self.skipped.append(Skipped(key, f"{type(exc).__name__}: {exc}"))
            return None
        return item

    def __iter__(self) -> Iterator[SourceItem]:
        """Readable items in key order; unreadable ones are skipped and recorded."""
        self.skipped.clear()
        for i in range(len(self)):
            item = self.read_checked(i)
            if item is not None:
                yield item

    def index_of(self) -> dict[str, int]:
        """Map key -> position in ``keys()``."""
        cached = getattr(self, "_index_of", None)
        if cached is None:
            cached = {k: i for i, k in enumerate(self.keys())}
            object.__setattr__(self, "_index_of", cached)
        return cached

    def labels(self) -> list[int | None]:
        """Labels in key order, without reading images where the source allows it."""
        return [self.read(i).label for i in range(len(self))]
