"""Decode once: every image of a source as one uint8 array (N x S x S x 3), cached on disk, memory-mapped.

Training and evaluation at small sizes are bound by JPEG decoding and per-image PIL work, not by the
model. When ``N * S * S * 3`` bytes fit a memory budget, a source is decoded once, in parallel threads
(Pillow releases the GIL while it decodes and resizes), written atomically to
``CACHE/decoded/<key>/`` and memory-mapped by every later run. The key covers the source fingerprint,
the size and the geometry rule, so a changed source or size never reuses a stale array. Sources over
the budget return None and keep their streaming path.

Geometry matches ``training.augment.evaluation``: at <= 64 px the image is resized to S x S, above that
its shorter side is resized to S and the centre cropped. Unreadable images are recorded in ``skipped``
(key and reason, as ``ImageSource.read_checked`` does) and their rows stay zero with ``ok`` False.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from semipairs.budget import budget_from_gb, default_budget_bytes  # noqa: F401 - budget_from_gb: old import path
from semipairs.errors import StoreError
from semipairs.sources.base import ImageSource, Skipped, read_or_skip, to_rgb

GEOMETRY = "v2-squash<=64-else-shorter+centre"


def cache_root() -> Path:
    """``$SEMIPAIRS_CACHE``, else ``$XDG_CACHE_HOME/semipairs``, else ``~/.cache/semipairs``."""
    if env := os.environ.get("SEMIPAIRS_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semipairs"


def fit(im: Image.Image, size: int) -> Image.Image:
    """The cached geometry of one image (see the module docstring), as RGB."""
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # decode reduced: a 36 MP photo never lands in memory whole
    im = to_rgb(im)
    if size <= 64:
        return im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR)
    w, h = im.size
    scale = size / min(w, h)
    if scale != 1:
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


@dataclass
class DecodedImages:
    """A source decoded at ``size``: ``images[i]`` is row i of ``source.keys()``; ``ok[i]`` False if unreadable."""

    images: np.ndarray
    ok: np.ndarray
    reasons: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (key, why it is unreadable)
    path: Path | None = None

    @property
    def skipped(self) -> list[Skipped]:
        return [Skipped(key, why) for _, (key, why) in sorted(self.reasons.items())]

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)


def decode_key(source: ImageSource, size: int) -> str:
    h = hashlib.sha256(f"{source.fingerprint()}\n{size}\n{GEOMETRY}".encode())
    return h.hexdigest()[:24]


def decoded_bytes(n: int, size: int) -> int:
    return n * size * size * 3


def _load(path: Path) -> DecodedImages:
    meta = json.loads((path / "meta.json").read_text())
    images = np.load(path / "images.npy", mmap_mode="r")
    ok = np.load(path / "ok.npy")
    return DecodedImages(images, ok, {int(row): (key, why) for row, key, why in meta["skipped"]}, path)


def decode_source(source: ImageSource, size: int, *, root: Path | None = None, budget_bytes: int | None = None,
                  workers: int | None = None, progress: bool = False) -> DecodedImages | None:
    """The decoded array of ``source`` at ``size`` (built once, then memory-mapped), or None when
    ``N x size x size x 3`` bytes exceed ``budget_bytes`` (default: a quarter of RAM; 0 never decodes).
    ``progress`` shows a bar while a new array is decoded."""
    n = len(source)
    budget = default_budget_bytes() if budget_bytes is None else budget_bytes
    if n == 0 or decoded_bytes(n, size) > budget:
        return None
    final = (root or cache_root()) / "decoded" / decode_key(source, size)
    if (final / "meta.json").is_file():
        return _load(final)
    keys = source.keys()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))  # unique per writer
    except OSError as exc:
        raise _cache_error(final, exc) from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        _reserve(tmp / "images.npy")  # a sparse memmap on a full disk dies of SIGBUS mid-decode; fail here instead
        ok = np.zeros(n, bool)
        reasons: dict[int, str] = {}

        def decode(i: int) -> bool:
            with Image.open(io.BytesIO(source.read(i).data)) as im:
                images[i] = np.asarray(fit(im, size))
            return True

        def one(i: int) -> None:
            ok[i] = bool(read_or_skip(lambda: decode(i), keys[i], lambda _k, why: reasons.__setitem__(i, why)))

        step = 512
        bar = tqdm(total=n, desc=f"decode once {source.spec} @{size}px", unit="img", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, n, step):
                list(pool.map(one, range(start, min(n, start + step))))
                bar.update(min(n, start + step) - start)
        bar.close()
        images.flush()
        np.save(tmp / "ok.npy", ok)
        skipped = [[i, keys[i], reasons[i]] for i in sorted(reasons)]
        (tmp / "meta.json").write_text(json.dumps({"source": source.spec, "n": n, "size": size, "geometry": GEOMETRY,
                                                   "skipped": skipped}))
        try:
            os.rename(tmp, final)
        except OSError:  # another writer published the same array first: theirs is identical, keep it
            if not (final / "meta.json").is_file():
                raise
    except OSError as exc:
        raise _cache_error(final, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(final)


def _cache_error(final: Path, exc: OSError) -> StoreError:
    return StoreError(f"{final}: cannot write the decoded-image cache ({exc.strerror or exc}): free space, point "
                      "SEMIPAIRS_CACHE at another disk, or stream the images (--decode-budget-gb 0)")


def _reserve(path: Path) -> None:
    """Allocate the whole file now (ENOSPC / EFBIG here, not a SIGBUS on some later page)."""
    if not hasattr(os, "posix_fallocate"):  # macOS
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system that cannot: go on
            raise
    finally:
        os.close(fd)
