"""A published pair-dataset version and ``load()``, the way users open one."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semipairs.errors import ShardReadError, StoreError
from semipairs.manifest import MANIFEST_NAME, PAIRS_NAME, Manifest, read_manifest, semver_key
from semipairs.verify import VerifyReport, verify_version

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from semipairs.sources.base import ImageSource
    from semipairs.torch_data import PairIterable, Transform


class PairDataset:
    """One version directory: its manifest, pair table, and torch / HF views."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)

    def __repr__(self) -> str:
        m = self.manifest
        return f"PairDataset({m.name!r}, version={m.version!r}, pairs={m.stats.num_pairs}, layout={m.layout!r})"

    def __len__(self) -> int:
        return self.manifest.stats.num_pairs

    @cached_property
    def table(self) -> pd.DataFrame:
        """The pair table, read only if its size is the one the manifest lists (a replaced or grown file is
        named, not parsed)."""
        from semipairs.table import read_pairs

        path = self.path / PAIRS_NAME
        entry = next((f for f in self.manifest.files if f.path == PAIRS_NAME), None)
        size = path.stat().st_size if path.is_file() else None
        if entry is not None and size != entry.bytes:
            got = "missing" if size is None else f"{size} bytes"
            raise ShardReadError(f"{path}: is {got}, the manifest says {entry.bytes} bytes (truncated or replaced?); "
                                 f"run `semipairs verify {self.path}`")
        return read_pairs(path)

    @property
    def shards(self) -> list[Path]:
        return [self.path / f.path for f in self.manifest.shard_files()]

    def verify(self) -> VerifyReport:
        return verify_version(self.path, self.manifest)

    def to_torch(
        self,
        transform: Transform | None = None,
        decode: bool = True,
        source: str | ImageSource | None = None,
    ) -> PairIterable:
        """An IterableDataset of (anchor, positive, meta); split over DataLoader workers and DDP ranks.

        A ``reference`` version needs ``source`` (a spec or an ImageSource) holding the keys.
        """
        from semipairs.torch_data import PairIterable

        if self.manifest.layout == "embedded":
            self._check_shard_sizes()  # a shard is read only up to what the manifest promises
            shards = [(str(self.path / f.path), f.samples or 0) for f in self.manifest.shard_files()]
            return PairIterable(shards, transform=transform, decode=decode)
        if source is None:
            raise StoreError(
                f"{self.path}: a 'reference' dataset holds no images; pass source= (e.g. "
                f"{self.manifest.source.uri!r}) to resolve its keys"
            )
        if isinstance(source, str):
            from semipairs.sources import open_source

            source = open_source(source)
        unknown = source.unknown_keys(self.table["anchor_key"].tolist() + self.table["positive_key"].tolist())
        if unknown:
            raise StoreError(f"{source.spec}: lacks keys of {self.path}: {sorted(unknown)[:5]} ({len(unknown)} in all)")
        rows = self.table.astype(object).where(self.table.notna(), None).to_dict("records")
        return PairIterable([], rows=rows, source=source, transform=transform, decode=decode)

    def to_hf(self, streaming: bool = False, **kwargs: Any) -> datasets.Dataset | datasets.IterableDataset:
        """A ``datasets`` dataset: the shards through the ``webdataset`` builder (embedded) or the pair
        table (reference). Fields: ``anchor.<ext>`` and ``positive.<ext>`` images, ``json`` meta."""
        import datasets

        if self.manifest.layout == "embedded":
            self._check_shard_sizes()
            files = [str(p) for p in self.shards]
            try:
                return datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=streaming,
                                             **kwargs)
            except Exception as exc:  # noqa: BLE001 - datasets wraps reader errors in its own generic error
                cause = exc.__cause__ or exc
                raise ShardReadError(f"{self.path}: the datasets webdataset reader failed on its shards "
                                     f"({type(cause).__name__}: {cause}); run `semipairs verify {self.path}`") from None
        return datasets.load_dataset(
            "parquet", data_files={"train": [str(self.path / PAIRS_NAME)]}, split="train", streaming=streaming, **kwargs
        )

    def _check_shard_sizes(self) -> None:
        """A shard whose size differs from its manifest entry is named before any reader touches it."""
        for f in self.manifest.shard_files():
            path = self.path / f.path
            size = path.stat().st_size if path.is_file() else None
            if size != f.bytes:
                got = "missing" if size is None else f"{size} bytes"
                raise ShardReadError(f"{path}: shard is {got}, the manifest says {f.bytes} bytes (truncated or replaced?)")

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "name": m.name,
            "version": m.version,
            "layout": m.layout,
            "created": m.created,
            "source": m.source.uri,
            "num_images": m.source.num_images,
            "skipped": len(m.source.skipped),
            "encoder": m.encoder.model_dump(exclude_none=True),
            "index": m.index.model_dump(),
            "mining": m.mining.model_dump(),
            "stats": m.stats.model_dump(),
            "files": len(m.files),
            "bytes": sum(f.bytes for f in m.files),
            "content_hash": m.content_hash,
        }


def list_versions(dataset_dir: str | Path) -> list[str]:
    """Published versions under ``STORE/NAME`` in semver order (temp dirs ignored)."""
    d = Path(dataset_dir)
    found = []
    for p in d.iterdir() if d.is_dir() else []:
        if p.name.startswith(".") or not (p / MANIFEST_NAME).is_file():
            continue
        try:
            semver_key(p.name)
        except ValueError:
            continue
        found.append(p.name)
    return sorted(found, key=semver_key)


def load(path: str | Path, version: str | None = None) -> PairDataset:
    """Open a pair dataset: a version directory, ``STORE/NAME`` (newest version unless ``version``), or a
    Hub id ``hf://OWNER/NAME[@REVISION]`` (downloaded through huggingface_hub's cache, then verified)."""
    if isinstance(path, str) and path.startswith("hf://"):
        from semipairs.hub import download

        if version is not None:
            raise StoreError(f"{path}: pick a Hub version with @REVISION (e.g. {path}@v{version}), not version=")
        ds = PairDataset(download(path))
        report = ds.verify()
        if not report.ok:
            raise StoreError(f"{path}: downloaded files do not verify: {report.problems[0]}")
        return ds
    p = version_path(path, version)
    ds = PairDataset(p)
    if version is not None and p == Path(path).expanduser() and ds.manifest.version != version:
        raise StoreError(f"{p} holds version {ds.manifest.version}, not {version}")
    return ds


def version_path(path: str | Path, version: str | None = None) -> Path:
    """The version directory that ``path`` names (itself, or the newest / given version under STORE/NAME),
    found without reading any manifest, so a broken manifest can still be reported on."""
    p = Path(path).expanduser()
    if (p / MANIFEST_NAME).is_file():
        return p
    if not p.is_dir():
        raise StoreError(f"{p}: no such pair dataset (expected a version dir or STORE/NAME)")
    versions = list_versions(p)
    if not versions:
        raise StoreError(f"{p}: no published version here (no */{MANIFEST_NAME})")
    if version is None:
        return p / versions[-1]
    if version not in versions:
        raise StoreError(f"{p}: no version {version}; found {versions}")
    return p / version
