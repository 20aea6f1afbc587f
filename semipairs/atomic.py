"""Atomic file writes for single files (manifests, configs, checkpoints, metrics, caches): ``atomic_write``.
Whole dataset versions (shards, parquet, audit) are instead written into a temporary version directory
that is verified and then renamed into place (``semipairs.publish``).

The content goes to a temporary file unique to this writer (same directory, so the rename stays on one
file system), is flushed, then renamed over the target: a reader sees the old file or the new one,
never half of one, and two writers of the same path never share a temp name. A failed write (disk
full, read-only directory) removes its temp file and raises ``StoreError`` naming the path and cause.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from semipairs.errors import StoreError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", suffix: str = "") -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)``; ``suffix`` keeps an extension libraries insist on (np.savez)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"{path}: write failed ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """UTF-8, whatever the locale (cards, reports and JSON are read on other machines)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def remove_stale_temps(path: str | Path) -> int:
    """Remove the temp files ``atomic_write`` leaves beside ``path`` when its writer is killed; call it only
    while holding ``path``'s lock (no live writer then). Returns how many went."""
    path = Path(path)
    n = 0
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            old.unlink()
            n += 1
    return n
