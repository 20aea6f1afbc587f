"""``webdataset:PATTERN``: images in local WebDataset tar shards (brace or glob patterns).

Tar headers are indexed once (member offsets, no image bytes read), which gives random access by
key for DataLoader workers and for resolving ``reference`` pair datasets. The image is the sample's
first image field; the label comes from a ``cls``, ``cls.txt``, ``label`` or ``class`` field.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from semipairs.errors import InvalidValueError, SourceError
from semipairs.sources.base import IMAGE_EXTS, ImageSource, SourceItem, normalise_ext

LABEL_FIELDS = ("cls", "cls.txt", "label", "class")


def expand_pattern(pattern: str) -> list[str]:
    """Brace-expand (``{000..009}``) then glob a shard pattern into sorted local paths."""
    out: list[str] = []
    for url in expand_urls(pattern):
        out.extend(sorted(glob.glob(url)) if any(c in url for c in "*?[") else [url])
    return out


@dataclass
class _Entry:
    shard: int
    image: tuple[int, int, str] | None = None  # (offset, size, ext)
    label: tuple[int, int] | None = None  # (offset, size)
    problem: str | None = None  # why this sample is never read (it is skipped and listed, like a corrupt image)


def member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read: an unsafe name or a member that is not a regular file."""
    parts = m.name.replace("\\", "/").split("/")
    if m.name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        return f"unsafe tar member name {m.name!r} (absolute or '..' path)"
    if m.issym() or m.islnk():
        return f"tar member {m.name!r} is a {'symbolic' if m.issym() else 'hard'} link, not a regular file"
    if not m.isfile():
        return f"tar member {m.name!r} is not a regular file"
    return None


@dataclass
class WebDatasetSource(ImageSource):
    pattern: str = ""
    _shards: list[str] = field(default_factory=list, init=False, repr=False)
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _entries: list[_Entry] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        shards = expand_pattern(self.pattern)
        if not shards:
            raise SourceError(f"{self.spec}: pattern {self.pattern!r} matches no shard")
        entries: dict[str, _Entry] = {}
        for s, shard in enumerate(shards):
            if not os.path.isfile(shard):
                raise SourceError(f"{self.spec}: shard {shard} does not exist (only local shards are read)")
            try:
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        if m.isdir():
                            continue
                        key, ext = base_plus_ext(m.name)
                        if key is None:
                            continue
                        e = entries.setdefault(key, _Entry(s))
                        problem = member_problem(m)
                        if problem is not None:
                            e.problem = e.problem or problem
                        elif ext.lower() in IMAGE_EXTS and e.image is None:
                            e.image = (m.offset_data, m.size, normalise_ext(ext))
                        elif ext.lower() in LABEL_FIELDS:
                            e.label = (m.offset_data, m.size)
            except (tarfile.TarError, OSError) as exc:
                raise SourceError(f"{self.spec}: shard {shard} cannot be read: {exc}") from None
        self._shards = shards
        self._keys = list(entries)
        self._entries = list(entries.values())
        if self._entries and all(e.label is not None for e in self._entries if e.problem is None):
            top = max((int(self._read_label(e)) for e in self._entries if e.problem is None), default=-1)
            self.classes = [str(i) for i in range(top + 1)]

    def _read_at(self, shard: int, offset: int, size: int) -> bytes:
        with open(self._shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"shard {self._shards[shard]} is truncated")
        return data

    def _read_label(self, e: _Entry) -> int:
        assert e.label is not None
        return int(self._read_at(e.shard, *e.label).decode().strip())

    def keys(self) -> list[str]:
        return self._keys

    def read(self, index: int) -> SourceItem:
        e = self._entries[index]
        key = self._keys[index]
        if e.problem is not None:
            raise InvalidValueError(e.problem)
        if e.image is None:
            raise InvalidValueError(f"sample {key!r} in {self._shards[e.shard]} has no image field")
        offset, size, ext = e.image
        label = self._read_label(e) if self.classes is not None else None
        return SourceItem(key, self._read_at(e.shard, offset, size), ext, label)

    def labels(self) -> list[int | None]:
        """Labels without reading images; None for a sample that is never read."""
        if self.classes is None:
            return [None] * len(self._entries)
        return [None if e.problem is not None or e.label is None else self._read_label(e) for e in self._entries]

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"webdataset\n")
        for shard in self._shards:
            st = os.stat(shard)
            h.update(f"{Path(shard).name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()
