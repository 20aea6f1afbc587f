"""``imagefolder:DIR``: images under DIR; labels from the first-level sub-folders when every image has one."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from semipairs.errors import SourceError
from semipairs.sources.base import IMAGE_EXTS, ImageSource, SourceItem, normalise_ext


@dataclass
class ImageFolderSource(ImageSource):
    """Keys are paths relative to DIR without the extension (``cat/0001``), sorted.

    Labels are the sorted first-level folder names (as torchvision's ImageFolder); images lying
    directly in DIR make the source unlabelled.
    """

    root: Path = field(default=Path("."))
    _files: list[str] = field(default_factory=list, init=False, repr=False)  # str: 50k Paths cost a second
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _labels: list[int | None] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise SourceError(f"{self.spec}: directory {root} does not exist")
        rels = sorted(self._scan(root))  # relative POSIX paths as strings: sorting Paths costs 10x more
        keys = [r.rsplit(".", 1)[0] for r in rels]
        if len(set(keys)) != len(keys):
            seen: dict[str, str] = {}
            for k, r in zip(keys, rels):
                if k in seen:
                    raise SourceError(f"{self.spec}: files {seen[k]} and {r} share the key {k!r}; keys are paths "
                                      "without extension, so rename one")
                seen[k] = r
        tops = [r.split("/", 1)[0] if "/" in r else None for r in rels]
        if rels and all(t is not None for t in tops):
            self.classes = sorted(set(tops))
            idx = {c: i for i, c in enumerate(self.classes)}
            self._labels = [idx[t] for t in tops]
        else:
            self.classes = None
            self._labels = [None] * len(rels)
        base = str(root).rstrip("/") + "/"
        self._files = [base + r for r in rels]
        self._keys = keys

    def _scan(self, root: Path) -> list[str]:
        """Image files under ``root`` (symlinked files included; directories as ``os.walk`` visits them), as
        relative POSIX paths. ``DirEntry.is_file`` answers from the directory listing, without a stat a file."""
        out: list[str] = []
        stack = [(os.fsencode(root), b"")]
        while stack:
            path, rel = stack.pop()
            with os.scandir(path) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((e.path, rel + e.name + b"/"))
                    elif b"." in e.name and e.name.rsplit(b".", 1)[1].lower().decode("latin-1") in IMAGE_EXTS \
                            and e.is_file():
                        try:
                            out.append((rel + e.name).decode("utf-8"))
                        except UnicodeDecodeError:  # keys are UTF-8 text in parquet, JSON and the Hub
                            raise SourceError(f"{self.spec}: file name {rel + e.name!r} is not valid UTF-8; "
                                              "rename it") from None
        return out

    def keys(self) -> list[str]:
        return self._keys

    def read(self, index: int) -> SourceItem:
        path = self._files[index]
        with open(path, "rb") as f:
            data = f.read()
        return SourceItem(self._keys[index], data, normalise_ext(path.rsplit(".", 1)[1]), self._labels[index])

    def labels(self) -> list[int | None]:
        return list(self._labels)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"imagefolder\n")
        lines = []
        for key, path in zip(self._keys, self._files):
            st = os.stat(path)
            lines.append(f"{key}\t.{path.rsplit('.', 1)[1]}\t{st.st_size}\t{st.st_mtime_ns}\n")
        h.update("".join(lines).encode())
        return "sha256:" + h.hexdigest()
