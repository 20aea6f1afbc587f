"""WebDataset pair shards: a streaming writer and a reader, torch-free.

One sample is one pair: ``<pair_id>.anchor.<ext>``, ``<pair_id>.positive.<ext>``, ``<pair_id>.json``.
Shard member names hold only the zero-padded pair id; source keys live in the json.

Both are the standard library's ``tarfile`` doing what webdataset does, because importing webdataset
imports torch (3 s on a 2-core CPU) and ``pack``, ``verify``, ``load``, ``push``, ``pull`` and ``audit``
only move tar bytes. The writer emits the bytes ``webdataset.TarWriter(encoder=False, mtime=0)`` emits
(members in sorted field order, mode 0444, owner ``bigdata``); the reader groups members as
``webdataset.tariterators`` does (key = the name up to the first dot of its last component, lower-cased
suffix, regular files only, ``__x__`` meta members skipped, a repeated field an error).
``tests/test_format.py`` holds both to webdataset's own code.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semipairs.errors import ShardReadError
from semipairs.hashing import HashingWriter
from semipairs.manifest import DATA_DIR, FileEntry

KEY_DIGITS = 9
SHARD_PATTERN = "pairs-{:06d}.tar"


def pair_key(pair_id: int) -> str:
    return f"{pair_id:0{KEY_DIGITS}d}"


def sample_meta(row: dict[str, Any]) -> bytes:
    """The per-pair json: plain JSON (no NaN), sorted keys, UTF-8 source keys."""
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    return json.dumps(clean, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class PairShardWriter:
    """Streams pair samples into ``ROOT/data/pairs-NNNNNN.tar``, rolling over at ``maxcount`` samples or
    ``maxsize`` bytes, hashing each shard as it is written. Tar mtimes are fixed, so the same pairs give
    byte-identical shards. Use as a context manager; ``files`` lists the finished shards.
    """

    root: Path
    ext: str
    maxcount: int = 5000
    maxsize: int = 1 << 30
    files: list[FileEntry] = field(default_factory=list)
    _tar: tarfile.TarFile | None = field(default=None, init=False, repr=False)
    _out: HashingWriter | None = field(default=None, init=False, repr=False)
    _count: int = field(default=0, init=False)
    _size: int = field(default=0, init=False)

    def __enter__(self) -> PairShardWriter:
        return self

    @property
    def current(self) -> str:
        """The shard being written (or the next one), relative to ``root``: what a failed write names."""
        return f"{DATA_DIR}/{SHARD_PATTERN.format(len(self.files))}"

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        path = Path(self.root) / DATA_DIR / SHARD_PATTERN.format(len(self.files))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = HashingWriter(open(path, "wb"))  # noqa: SIM115 - closed in _finish
        self._tar = tarfile.open(fileobj=self._out, mode="w|")  # noqa: SIM115 - closed in _finish
        self._count = self._size = 0

    def _finish(self) -> None:
        if self._tar is None or self._out is None:
            return
        self._tar.close()
        self._out.close()
        path = f"{DATA_DIR}/{SHARD_PATTERN.format(len(self.files))}"
        self.files.append(FileEntry(path=path, bytes=self._out.bytes, sha256=self._out.hexdigest(), samples=self._count))
        self._tar = self._out = None

    def write(self, pair_id: int, anchor: bytes, positive: bytes, meta: bytes) -> None:
        if self._tar is None or self._count >= self.maxcount or self._size >= self.maxsize:
            self._finish()
            self._open()
        assert self._tar is not None
        key = pair_key(pair_id)
        for suffix, data in sorted({f"anchor.{self.ext}": anchor, f"positive.{self.ext}": positive, "json": meta}.items()):
            member = tarfile.TarInfo(f"{key}.{suffix}")
            member.size, member.mtime, member.mode = len(data), 0, 0o444  # int mtime: a float adds a PAX header
            member.uname = member.gname = "bigdata"
            self._tar.addfile(member, io.BytesIO(data))
            self._size += len(data)
        self._count += 1

    def close(self) -> None:
        self._finish()


def iter_shard(path: str | Path, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``anchor.<ext>``, ``positive.<ext>``, ``json`` bytes) of one shard.

    Any read failure, an incomplete sample or fewer samples than ``expected`` raises ShardReadError
    naming the shard: a cut-off shard must not pass for a short one.
    """
    path = str(path)
    n = 0
    try:
        for sample in _tar_samples(path):
            fields = [k for k in sample if not k.startswith("__")]
            if "json" not in fields or not any(k.startswith("anchor.") for k in fields) or not any(
                k.startswith("positive.") for k in fields
            ):
                raise ShardReadError(f"{path}: sample {sample.get('__key__')!r} is incomplete (fields {fields})")
            n += 1
            yield sample
    except ShardReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tar, IO and gzip errors all mean this shard is broken
        raise ShardReadError(f"{path}: cannot read shard after {n} samples: {type(exc).__name__}: {exc}") from None
    if expected is not None and n != expected:
        raise ShardReadError(f"{path}: shard holds {n} samples, the manifest says {expected} (truncated?)")


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: (key, suffix)
_META = re.compile(r"__[^/]*__($|/)")


def _tar_samples(path: str) -> Iterator[dict[str, Any]]:
    """Consecutive tar members with one key as one sample dict (``__key__``, ``__url__``, suffix -> bytes)."""
    sample: dict[str, Any] | None = None
    with tarfile.open(path, mode="r|*") as stream:
        for member in stream:
            if not member.isreg() or _META.match(member.name):
                continue
            match = _MEMBER.match(member.name)
            if not match:
                continue
            key, suffix = match[1], match[2].lower()
            data = stream.extractfile(member).read()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": path}
            if suffix in sample:
                raise ValueError(f"{member.name}: duplicate file name in tar file")
            sample[suffix] = data
            stream.members = []  # a streamed tar keeps every header otherwise
    if sample is not None:
        yield sample


def split_sample(sample: dict[str, Any]) -> tuple[bytes, bytes, dict[str, Any]]:
    """(anchor bytes, positive bytes, meta dict) of a raw pair sample."""
    anchor = positive = b""
    for k, v in sample.items():
        if k.startswith("anchor."):
            anchor = v
        elif k.startswith("positive."):
            positive = v
    return anchor, positive, json.loads(sample["json"])


class ShardIndex:
    """Random access to the images of an embedded version, by pair id and role (``anchor`` / ``positive``).

    Each shard's tar headers are read once, on first use (the standard library's ``tarfile``, no member
    data), and an image is then one seek and one read: a review page or a derived version touches a few
    pairs of a large dataset without streaming every shard.
    """

    def __init__(self, shards: list[tuple[Path, int]]) -> None:
        self.shards = shards
        self._starts = [0]
        for _, n in shards:
            self._starts.append(self._starts[-1] + n)
        self._members: dict[int, dict[tuple[str, str], tuple[int, int, str]]] = {}

    def _shard_of(self, pair_id: int) -> int:
        import bisect

        s = bisect.bisect_right(self._starts, pair_id) - 1
        if pair_id < 0 or s >= len(self.shards):
            raise KeyError(pair_id)
        return s

    def _index(self, s: int) -> dict[tuple[str, str], tuple[int, int, str]]:
        if s not in self._members:
            import tarfile

            path = self.shards[s][0]
            try:
                with tarfile.open(path, "r:") as tar:
                    parts = ((m, m.name.split(".", 2)) for m in tar if m.isfile())
                    self._members[s] = {(p[0], p[1]): (m.offset_data, m.size, p[2]) for m, p in parts if len(p) == 3}
            except (OSError, tarfile.TarError) as exc:
                raise ShardReadError(f"{path}: cannot index shard: {type(exc).__name__}: {exc}") from None
        return self._members[s]

    def read(self, pair_id: int, role: str) -> tuple[bytes, str]:
        """(encoded bytes, extension) of one side of a pair; KeyError for a pair id the shards lack."""
        s = self._shard_of(pair_id)
        offset, size, ext = self._index(s)[(pair_key(pair_id), role)]
        with open(self.shards[s][0], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise ShardReadError(f"{self.shards[s][0]}: member {pair_key(pair_id)}.{role}.{ext} is cut off")
        return data, ext
