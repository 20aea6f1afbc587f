"""``cifar10:ROOT[:train|test]``: torchvision's CIFAR-10 folder (``cifar-10-batches-py``).

The batches are pickles; they are read with an unpickler that admits only the numpy and builtin
types the official files hold, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from semipairs.errors import SourceError
from semipairs.sources.base import ImageSource, SourceItem

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def load_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(N x 32 x 32 x 3 uint8 images, labels) from one python-format CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = [int(x) for x in d[b"labels"]]
    except Exception as exc:  # noqa: BLE001 - any failure names the batch file
        raise SourceError(f"{path}: not a readable CIFAR-10 batch: {exc}") from None
    if len(labels) != len(data):
        raise SourceError(f"{path}: {len(data)} images but {len(labels)} labels")
    return np.ascontiguousarray(data), labels


@dataclass
class Cifar10Source(ImageSource):
    """Keys ``train/00000`` .. in the official order; images served as lossless PNG."""

    root: Path = field(default=Path("."))
    split: str = "train"
    _images: np.ndarray = field(default=None, init=False, repr=False)  # type: ignore[assignment]
    _labels: list[int] = field(default_factory=list, init=False, repr=False)
    _files: list[Path] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in _BATCHES:
            raise SourceError(f"{self.spec}: split {self.split!r} is not 'train' or 'test'")
        root = Path(self.root)
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        files = [folder / b for b in _BATCHES[self.split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SourceError(f"{self.spec}: {folder} lacks CIFAR-10 batch files {missing}")
        parts = [load_batch(f) for f in files]
        self._images = np.concatenate([p[0] for p in parts])
        self._labels = [lab for p in parts for lab in p[1]]
        self._files = files
        self.classes = list(CLASSES)

    def keys(self) -> list[str]:
        return [f"{self.split}/{i:05d}" for i in range(len(self._images))]

    def __len__(self) -> int:
        return len(self._images)

    def read(self, index: int) -> SourceItem:
        buf = io.BytesIO()
        Image.fromarray(self._images[index]).save(buf, format="PNG")
        return SourceItem(f"{self.split}/{index:05d}", buf.getvalue(), "png", self._labels[index])

    def labels(self) -> list[int | None]:
        return list(self._labels)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"cifar10:{self.split}\n".encode())
        for f in self._files:
            h.update(f"{f.name}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()
