"""``digits``: scikit-learn's bundled 8x8 digit scans (1,797 images, 10 labels), the offline default."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from semipairs.sources.base import ImageSource, SourceItem


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class DigitsSource(ImageSource):
    """Keys ``0000``..``1796``; images are lossless 8x8 grayscale PNGs (values 0-16 scaled to 0-255)."""

    _images: np.ndarray = field(default=None, init=False, repr=False)  # type: ignore[assignment]
    _targets: np.ndarray = field(default=None, init=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        self._images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
        self._targets = d.target.astype(np.int64)
        self.classes = [str(i) for i in range(10)]

    def keys(self) -> list[str]:
        return [f"{i:04d}" for i in range(len(self._images))]

    def __len__(self) -> int:
        return len(self._images)

    def read(self, index: int) -> SourceItem:
        return SourceItem(f"{index:04d}", _png(self._images[index]), "png", int(self._targets[index]))

    def labels(self) -> list[int | None]:
        return [int(t) for t in self._targets]

    def fingerprint(self) -> str:
        return "digits:sklearn-1797"
