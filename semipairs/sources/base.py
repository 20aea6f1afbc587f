"""What every image source gives: stable keys, encoded bytes, an optional label.

Sources never decode more than a check needs: pair shards copy the encoded bytes as they are, so a
JPEG stays the same JPEG. A corrupt or unreadable image is skipped, counted and listed in ``skipped``
(it ends up in the manifest), never fatal.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image

from semipairs.errors import SourceError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: its key, encoded bytes, file extension and label (or None)."""

    key: str
    data: bytes
    ext: str
    label: int | None = None

    def image(self, mode: str = "RGB", at_least: int | None = None) -> Image.Image:
        """The decoded image; ``at_least`` lets a JPEG decode reduced (DCT scaling) while both sides stay
        >= that many pixels, so a 36-megapixel photo headed for a 224 px model never lands in memory whole."""
        with Image.open(io.BytesIO(self.data)) as im:
            if at_least:
                im.draft("RGB" if mode == "RGB" else mode, (at_least, at_least))
            return to_rgb(im) if mode == "RGB" else im.convert(mode)


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, content kept: 16/32-bit grey (``I;16``, ``I``, ``F``) is scaled to 0-255,
    where ``convert("RGB")`` would clip it to white; every other mode goes through ``convert``."""
    if im.mode not in WIDE_MODES:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    if im.mode == "F" and a.max(initial=0) <= 1.0:
        top = 1.0
    grey = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def thumbnail(data: bytes, size: int = 128) -> Image.Image:
    """An RGB thumbnail no larger than ``size``; JPEGs decode reduced, so memory follows the thumbnail."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        im.thumbnail((size, size), reducing_gap=2.0)
        return to_rgb(im)


def spec_options(spec: str, text: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE,KEY=VALUE`` after a spec's ``#`` as a dict; an unknown or empty option names the allowed."""
    opts: dict[str, str] = {}
    for part in filter(None, (text or "").split(",")):
        k, sep, v = part.partition("=")
        if not sep or k not in allowed or not v:
            use = " and/or ".join(f"{a}=COLUMN" for a in allowed)
            raise SourceError(f"{spec!r}: unknown option {part!r} after '#' (use {use})")
        opts[k] = v
    return opts


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


T = TypeVar("T")


def read_or_skip(read: Callable[[], T], key: str, record: Callable[[str, str], object]) -> T | None:
    """The one skip policy (sources, embedding, publish, both training data paths): ``read()``, or None after
    ``record(key, reason)`` when reading or decoding raises anything. A corrupt, truncated, missing or
    undecodable image is never fatal and never silent; decoders raise too many kinds of error to list."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped, by contract
        record(key, f"{type(exc).__name__}: {exc}")
        return None


def normalise_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # what a complete file ends with


def check_image(data: bytes) -> None:
    """Raise if ``data`` is not a decodable image; cheap where it can be.

    The header is parsed (format, mode, size: a PIL ``open``); a JPEG or PNG that then ends with its end
    marker (EOI / IEND) is accepted without decoding, which is what makes publishing with checks as fast as
    writing shards. Anything else (other formats, a missing marker: truncation, trailing bytes) is decoded,
    JPEGs at reduced scale (``draft``) - which still reads the whole entropy-coded stream. A file damaged
    inside but whole at both ends passes; training and embedding decode it fully and skip it then.
    """
    with Image.open(io.BytesIO(data)) as im:
        marker = _END_MARKERS.get(im.format or "")
        if marker is not None and im.width > 0 and im.height > 0 and data.endswith(marker):
            return
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

    @property
    def has_images(self) -> bool:
        """False for a source of embeddings only (``embeddings:DIR``): pairs resolve by key elsewhere."""
        return True

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

        def checked() -> SourceItem:
            item = self.read(index)
            if check:
                check_image(item.data)
            return item

        return read_or_skip(checked, self.keys()[index], lambda k, why: self.skipped.append(Skipped(k, why)))

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

    def read_key(self, key: str) -> SourceItem:
        """The item a key names (a pair's anchor or positive); KeyError for a key the source lacks."""
        return self.read(self.index_of()[key])

    def unknown_keys(self, keys: Iterable[str]) -> list[str]:
        """The distinct keys among ``keys`` that this source does not hold, in first-seen order."""
        known = self.index_of()
        return [k for k in dict.fromkeys(keys) if k not in known]

    def labels(self) -> list[int | None]:
        """Labels in key order, without reading images where the source allows it."""
        return [self.read(i).label for i in range(len(self))]
