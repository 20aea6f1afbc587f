"""``embeddings:DIR[#key=COLUMN,label=COLUMN]``: precomputed embeddings in clip-retrieval's output layout.

``DIR/img_emb/img_emb_N.npy`` (rows x dim, float16 or float32) beside ``DIR/metadata/metadata_N.parquet``
(the same rows, in order). Keys come from a metadata column (``image_path`` by default), labels from a
named column. The source holds no image bytes: curation publishes reference-layout pairs from it, resolved
later against the user's own copy of the images by key. The vectors stay on disk, read on demand (``Parts``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semipairs.arrays import Parts, degenerate_rows
from semipairs.errors import SourceError
from semipairs.sources.base import ImageSource, SourceItem, spec_options

_PART = re.compile(r"^(?:img_emb|metadata)_(\d+)\.(?:npy|parquet)$")


@dataclass
class EmbeddingsSource(ImageSource):
    """Rows in part order (``img_emb_0``, ``img_emb_1``, ...); keys are the key column's values as text."""

    root: Path = field(default=Path("."))
    key_column: str = "image_path"
    label_column: str | None = None
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _labels: list[int | None] = field(default_factory=list, init=False, repr=False)
    _files: list[Path] = field(default_factory=list, init=False, repr=False)
    vectors: Parts | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import pyarrow.parquet as pq

        root = Path(self.root)
        emb, meta = self._parts(root / "img_emb", "img_emb", ".npy"), self._parts(root / "metadata", "metadata", ".parquet")
        if set(emb) != set(meta):
            n = min(set(emb) ^ set(meta))
            missing = root / "metadata" / f"metadata_{n}.parquet" if n in emb else root / "img_emb" / f"img_emb_{n}.npy"
            raise SourceError(f"{self.spec}: {missing} is missing (every img_emb_N.npy needs metadata_N.parquet)")
        vectors = Parts([emb[n] for n in sorted(emb)], SourceError, f"{self.spec}: ")  # checks each .npy once
        keys, labels = [], []
        for i, n in enumerate(sorted(emb)):
            table = self._read_meta(pq, meta[n])
            rows = int(vectors.offsets[i + 1] - vectors.offsets[i])
            if table.num_rows != rows:
                raise SourceError(f"{self.spec}: {meta[n]} has {table.num_rows} rows but {emb[n].name} has "
                                  f"{rows}; rows must align")
            keys += [str(k) for k in table.column(self.key_column).to_pylist()]
            if self.label_column:
                labels += table.column(self.label_column).to_pylist()
        if len(set(keys)) != len(keys):
            dup = next(k for k, c in zip(*np.unique(np.asarray(keys, dtype=object), return_counts=True)) if c > 1)
            raise SourceError(f"{self.spec}: key {dup!r} (column {self.key_column!r}) names more than one row; keys "
                              "must be unique (name another column with #key=COLUMN)")
        self._keys, self._files = keys, [emb[n] for n in sorted(emb)] + [meta[n] for n in sorted(meta)]
        self._set_labels(labels)
        self.vectors = vectors

    def _parts(self, folder: Path, stem: str, ext: str) -> dict[int, Path]:
        if not folder.is_dir():
            raise SourceError(f"{self.spec}: {folder} is missing (expected clip-retrieval's {stem}/{stem}_N{ext} files)")
        found = {int(m[1]): p for p in folder.iterdir() if (m := _PART.match(p.name)) and p.name.startswith(stem)}
        if not found:
            raise SourceError(f"{self.spec}: no {stem}_N{ext} file in {folder}")
        return found

    def _read_meta(self, pq, path: Path):
        cols = [self.key_column] + ([self.label_column] if self.label_column else [])
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet is the user's file to fix
            raise SourceError(f"{self.spec}: {path} is not a readable parquet file: {exc}") from None
        for c in cols:
            if c not in names:
                raise SourceError(f"{self.spec}: {path} has no column {c!r} (columns: {', '.join(names)}); "
                                  "name one with #key=COLUMN / #label=COLUMN")
        return pq.read_table(path, columns=cols)

    def _set_labels(self, values: list) -> None:
        if not self.label_column:
            self.classes, self._labels = None, [None] * len(self._keys)
            return
        known = sorted({v for v in values if v is not None}, key=lambda v: (not isinstance(v, (int, np.integer)), str(v)))
        ints = all(isinstance(v, (int, np.integer)) and v >= 0 for v in known)
        if ints:  # integer labels are class indices already
            self.classes = [str(i) for i in range(int(max(known, default=-1)) + 1)]
            self._labels = [None if v is None else int(v) for v in values]
        else:
            self.classes = [str(v) for v in known]
            idx = {v: i for i, v in enumerate(known)}
            self._labels = [None if v is None else idx[v] for v in values]

    @property
    def has_images(self) -> bool:
        return False

    def check_rows(self, block: int = 65_536) -> None:
        """Every row finite and non-zero, read block by block; else an error naming the part file and row
        (a NaN row in someone's embedding job is a bug to fix there, not an image to skip)."""
        for part, path in enumerate(self.vectors.paths):
            first, stop = int(self.vectors.offsets[part]), int(self.vectors.offsets[part + 1])
            for start in range(0, stop - first, block):
                x = self.vectors[first + start:min(stop, first + start + block)]
                nonfinite, zero = degenerate_rows(x)
                bad = nonfinite | zero
                if bad.any():
                    i = start + int(np.argmax(bad))
                    what = "NaN or inf" if nonfinite[i - start] else "all zeros"
                    raise SourceError(f"{self.spec}: {path} row {i} is {what} ({int(bad.sum())} such rows in this "
                                      "block); fix the embedding job or drop the rows")

    def keys(self) -> list[str]:
        return self._keys

    def labels(self) -> list[int | None]:
        return list(self._labels) if self._labels else [None] * len(self._keys)

    def read(self, index: int) -> SourceItem:
        raise OSError(f"{self.spec} holds embeddings, not images: resolve key {self._keys[index]!r} against the "
                      "images' own source")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"embeddings\n{self.key_column}\n{self.label_column}\n".encode())
        for path in self._files:
            st = path.stat()
            h.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()


def parse_embeddings_spec(spec: str, arg: str) -> dict:
    """``embeddings:DIR[#key=COLUMN,label=COLUMN]`` -> root, key_column, label_column."""
    path, _, opts = arg.partition("#")
    o = spec_options(spec, opts, ("key", "label"))
    return {"root": Path(path).expanduser(), "key_column": o.get("key", "image_path"), "label_column": o.get("label")}


def with_columns(spec: str, key: str | None, label: str | None) -> str:
    """``spec`` with its ``#key=`` / ``#label=`` options set from flags (flags win); a SourceError when columns
    are named for a source other than ``embeddings:``."""
    if key is None and label is None:
        return spec
    kind, _, arg = spec.partition(":")
    if kind != "embeddings":
        raise SourceError(f"--key-column / --label-column name metadata columns of embeddings:DIR, not of {spec!r}")
    path, _, opts = arg.partition("#")
    o = spec_options(spec, opts, ("key", "label"))
    o.update({k: v for k, v in (("key", key), ("label", label)) if v})
    return f"embeddings:{path}#" + ",".join(f"{k}={v}" for k, v in o.items())
