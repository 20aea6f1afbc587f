"""Checksums: per-file sha256 and the content_hash over a version's data files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes and counts bytes as they pass.

    Shards are hashed while they are written, so publishing never reads a shard back twice.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def content_hash(files: Iterable[tuple[str, str]]) -> str:
    """Hash of a version's content: sha256 over sorted ``path<TAB>sha256`` lines.

    Only data files take part (pairs.parquet, shards), never the manifest or the card, so the same
    inputs give the same hash whenever they are published.
    """
    h = hashlib.sha256()
    for path, digest in sorted(files):
        h.update(f"{path}\t{digest}\n".encode())
    return "sha256:" + h.hexdigest()
