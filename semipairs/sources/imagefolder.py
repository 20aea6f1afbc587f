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
    _files: list[Path] = field(default_factory=list, init=False, repr=False)
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _labels: list[int | None] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise SourceError(f"{self.spec}: directory {root} does not exist")
        files = sorted(
            (p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        rels = [p.relative_to(root) for p in files]
        for r in rels:
            try:
                r.as_posix().encode("utf-8")
            except UnicodeEncodeError:  # keys are UTF-8 text in parquet, JSON and the Hub
                raise SourceError(f"{self.spec}: file name {os.fsencode(r)!r} is not valid UTF-8; rename it") from None
        keys = [r.with_suffix("").as_posix() for r in rels]
        seen: dict[str, Path] = {}
        for k, r in zip(keys, rels):
            if k in seen:
                raise SourceError(
                    f"{self.spec}: files {seen[k].as_posix()} and {r.as_posix()} share the key {k!r}; "
                    "keys are paths without extension, so rename one"
                )
            seen[k] = r
        labelled = bool(rels) and all(len(r.parts) >= 2 for r in rels)
        if labelled:
            self.classes = sorted({r.parts[0] for r in rels})
            idx = {c: i for i, c in enumerate(self.classes)}
            self._labels = [idx[r.parts[0]] for r in rels]
        else:
            self.classes = None
            self._labels = [None] * len(rels)
        self._files, self._keys = files, keys

    def keys(self) -> list[str]:
        return self._keys

    def read(self, index: int) -> SourceItem:
        path = self._files[index]
        return SourceItem(self._keys[index], path.read_bytes(), normalise_ext(path.suffix), self._labels[index])

    def labels(self) -> list[int | None]:
        return list(self._labels)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"imagefolder\n")
        for key, path in zip(self._keys, self._files):
            st = os.stat(path)
            h.update(f"{key}\t{path.suffix}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()
