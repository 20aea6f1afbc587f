"""Publishing one immutable version: write to a temp dir, verify, then rename into ``STORE/NAME/VERSION``.

Whatever fails on the way, the temp dir is removed and nothing already in the store is touched.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from tqdm.auto import tqdm

from semipairs import __version__, faults
from semipairs.card import render_card
from semipairs.errors import PairsError, StoreError
from semipairs.hashing import content_hash, sha256_file
from semipairs.lock import exclusive
from semipairs.manifest import (
    CARD_NAME,
    MANIFEST_NAME,
    PAIRS_NAME,
    EncoderInfo,
    FileEntry,
    IndexInfo,
    Layout,
    Manifest,
    MiningInfo,
    ParentRef,
    ReviewRecord,
    SkippedImage,
    SourceInfo,
    check_name,
    check_version,
)
from semipairs.shards import PairShardWriter, sample_meta
from semipairs.sources.base import WIDE_MODES, ImageSource, Skipped, check_image, normalise_ext, read_or_skip, to_rgb
from semipairs.table import compute_stats, to_arrow, write_pairs
from semipairs.verify import verify_version

READ_THREADS = 2  # image reads + checks ahead of the writer; 2 keep a 2-core machine busy beside it
READ_CHUNK = 64
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}


@dataclass
class PublishRequest:
    """Everything one version is made of. ``pairs`` has anchor_key, positive_key, score, rank, mutual."""

    store: Path
    name: str
    version: str
    source: ImageSource
    pairs: pd.DataFrame
    layout: Layout = "embedded"
    encoder: EncoderInfo = field(default_factory=lambda: EncoderInfo(kind="external"))
    index: IndexInfo = field(default_factory=lambda: IndexInfo(factory="external", metric="external"))
    mining: MiningInfo = field(default_factory=lambda: MiningInfo(strategy="external"))
    parent: ParentRef | None = None
    # A version derived from another (a reviewed cut) keeps its parent's source record as it is: its own
    # source then only serves the images, and the counts stay those of the images the pairs came from.
    source_info: SourceInfo | None = None
    review: ReviewRecord | None = None
    config: dict[str, Any] | None = None
    skipped: list[Skipped] = field(default_factory=list)  # images already found unreadable (e.g. while embedding)
    shard_size: int = 5000
    check_images: bool = True
    license: str = "other"
    progress: bool = True
    extra_files: dict[str, bytes] = field(default_factory=dict)  # documentation files, not hashed
    # Called with the temp version dir once table and manifest are written (before verify and rename);
    # writes e.g. audit/ there and returns a markdown summary for the card. Curation passes its audit.
    audit: Callable[[Path], str | None] | None = None


def version_dir(store: str | Path, name: str, version: str) -> Path:
    return Path(store) / check_name(name) / check_version(version)


def new_version_dir(store: str | Path, name: str, version: str) -> Path:
    """The directory of a version about to be published; a StoreError if it exists (versions are immutable)."""
    target = version_dir(store, name, version)
    if target.exists():
        raise StoreError(f"{target}: version {version} of {name!r} already exists; versions are immutable")
    return target


def _reencode(data: bytes, ext: str) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        fmt = _PIL_FORMAT.get(ext, "PNG")
        im = to_rgb(im) if im.mode not in ("RGB", "L") and (fmt == "JPEG" or im.mode in WIDE_MODES) else im
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buf.getvalue()


class _ImageReader:
    """Reads each source image at most once for its check; remembers the bad ones. Called from the
    prefetch threads: its set and dict only ever gain entries, and a key checked twice in a race is harmless."""

    def __init__(self, source: ImageSource, check: bool, known_bad: list[Skipped]) -> None:
        self.source, self.check = source, check
        self.pos = source.index_of()
        self.ok: set[str] = set()
        self.bad: dict[str, str] = {s.key: s.reason for s in known_bad}

    def read(self, key: str) -> tuple[bytes, str] | None:
        if key in self.bad:
            return None

        def checked() -> tuple[bytes, str]:
            item = self.source.read(self.pos[key])
            if self.check and key not in self.ok:
                check_image(item.data)
                self.ok.add(key)
            return item.data, item.ext

        return read_or_skip(checked, key, self.bad.__setitem__)


class _WriteFailed(Exception):
    """An OSError while writing ``rel`` (a path inside the version): publish names it in the target."""

    def __init__(self, rel: str, exc: OSError) -> None:
        super().__init__(rel)
        self.rel, self.exc = rel, exc


@contextlib.contextmanager
def _writing(rel: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _WriteFailed(rel, exc) from exc


def publish(req: PublishRequest) -> Path:
    """Write, verify and atomically publish one version; return its directory. A write that fails (disk
    full, quota, read-only) is a StoreError naming the file, and leaves no temp directory behind."""
    target = new_version_dir(req.store, req.name, req.version)
    if req.pairs.empty:
        raise PairsError("no pairs to publish")
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target, f"publishing {req.name} {req.version}"):
        new_version_dir(req.store, req.name, req.version)  # the holder before us may just have published it
        _remove_stale_temps(target)
        return _publish_locked(req, target)


def _remove_stale_temps(target: Path) -> None:
    """Temp dirs of this version left by a killed writer: under the version's lock, none can be live."""
    mine = re.compile(rf"\.tmp-{re.escape(target.name)}-[0-9a-f]{{8}}")  # not 1.0.0-rc.1's for 1.0.0
    for old in target.parent.glob(f".tmp-{target.name}-*"):
        if mine.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)


def _publish_locked(req: PublishRequest, target: Path) -> Path:
    tmp = target.parent / f".tmp-{req.version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            manifest = _write(req, tmp)
        except _WriteFailed as w:
            raise StoreError(f"{target / w.rel}: write failed ({w.exc.strerror or w.exc}); nothing was published") from None
        report = verify_version(tmp, manifest, samples=False)  # shards just streamed and hashed by the writer
        if not report.ok:
            raise StoreError(f"{target}: verification before publishing failed: {report.problems[0]}")
        faults.point("publish.rename")
        try:
            os.rename(tmp, target)  # atomic; fails if a concurrent publish won the race
        except OSError as exc:
            raise StoreError(f"{target}: cannot publish (another writer?): {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write(req: PublishRequest, root: Path) -> Manifest:
    """Shards (embedded layout), table, manifest, card and documentation files of one version, into ``root``."""
    src = req.source
    reader = _ImageReader(src, req.check_images, req.skipped)
    pairs = req.pairs.reset_index(drop=True)
    labels = src.labels() if src.has_labels else None
    keep, reencoded, shard_files = _write_shards(req, root, reader, pairs, labels)
    final = pairs[keep].reset_index(drop=True)
    if final.empty:
        raise PairsError(f"no pair left: every pair has an unreadable image ({len(reader.bad)} unreadable)")
    files = [_write_table(root, final, labels, reader.pos)] + shard_files
    skipped = reader.bad  # the known unreadable images plus those found now
    source = req.source_info or SourceInfo(
        uri=src.spec,
        fingerprint=src.fingerprint(),
        num_images=len(src) - len(skipped),
        has_labels=src.has_labels,
        skipped=[SkippedImage(key=k, reason=r) for k, r in sorted(skipped.items())],
    )
    manifest = Manifest(
        name=req.name,
        version=req.version,
        created_with=f"semipairs {__version__}",
        layout=req.layout,
        source=source,
        encoder=req.encoder,
        index=req.index,
        mining=req.mining,
        stats=compute_stats(final, source.num_images, reencoded),
        files=files,
        parent=req.parent,
        review=req.review,
        content_hash=content_hash((f.path, f.sha256) for f in files),
    )
    _write_docs(req, root, manifest)
    return manifest


def _write_shards(req: PublishRequest, root: Path, reader: _ImageReader, pairs: pd.DataFrame,
                  labels: list[int | None] | None) -> tuple[np.ndarray, int, list[FileEntry]]:
    """Reads each pair's two images once; writes them into shards (embedded layout), re-encoding only an
    image whose format differs from the shards'. (pairs kept, images re-encoded, shard file entries)."""
    keep = np.ones(len(pairs), dtype=bool)
    reencoded = 0
    if req.layout == "reference" and not req.check_images:
        return keep, reencoded, []  # pairs by key: no image is read (curation already found the unreadable ones)
    anchors, positives = pairs["anchor_key"].tolist(), pairs["positive_key"].tolist()
    scores, ranks, mutual = pairs["score"].tolist(), pairs["rank"].tolist(), pairs["mutual"].tolist()
    bar: Callable = tqdm if req.progress else (lambda it, **_: it)
    writer = PairShardWriter(root, ext="", maxcount=req.shard_size) if req.layout == "embedded" else None
    pair_id = 0

    def read_chunk(c: int) -> list:  # one task per READ_CHUNK pairs: a future per pair costs more than a read
        return [(reader.read(anchors[i]), reader.read(positives[i]))
                for i in range(c * READ_CHUNK, min(len(pairs), (c + 1) * READ_CHUNK))]

    chunks = _prefetched(read_chunk, -(-len(pairs) // READ_CHUNK))
    read = (ap for chunk in chunks for ap in chunk)
    try:
        for i in bar(range(len(pairs)), desc=f"publish {req.name} {req.version}", unit="pair"):
            a, p = next(read)
            if a is None or p is None:
                keep[i] = False
                continue
            if writer is None:
                continue
            writer.ext = writer.ext or normalise_ext(a[1])
            images = []
            for data, ext in (a, p):
                if normalise_ext(ext) != writer.ext:
                    data = _reencode(data, writer.ext)
                    reencoded += 1
                images.append(data)
            meta = {"pair_id": pair_id, "anchor_key": anchors[i], "positive_key": positives[i], "score": float(scores[i]),
                    "rank": int(ranks[i]), "mutual": bool(mutual[i])}
            if labels is not None:
                meta["anchor_label"] = labels[reader.pos[anchors[i]]]
                meta["positive_label"] = labels[reader.pos[positives[i]]]
            with _writing(writer.current):
                writer.write(pair_id, images[0], images[1], sample_meta(meta))
            pair_id += 1
            if pair_id == len(pairs) // 2:
                faults.point("publish.shards")
    finally:
        chunks.close()
        if writer is not None:
            with _writing(writer.current):
                writer.close()
    return keep, reencoded, writer.files if writer is not None else []


def _prefetched(fn: Callable[[int], Any], n: int, threads: int = READ_THREADS, ahead: int = 8) -> Iterator[Any]:
    """``fn(0) .. fn(n-1)`` in order, computed up to ``ahead`` items early in ``threads`` threads: file reads and
    image checks (PIL decodes without the GIL) overlap the shard writer, which stays in this thread."""
    with ThreadPoolExecutor(threads) as pool:
        window: deque[Future] = deque()
        try:
            for i in range(n):
                window.append(pool.submit(fn, i))
                if len(window) > ahead:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def _write_table(root: Path, final: pd.DataFrame, labels: list[int | None] | None, pos: dict[str, int]) -> FileEntry:
    """pairs.parquet (pair ids 0..N-1, labels when the source has them); its file entry."""
    final.insert(0, "pair_id", np.arange(len(final), dtype=np.int64))
    if labels is not None:
        final["anchor_label"] = pd.array([labels[pos[k]] for k in final["anchor_key"]], dtype="Int32")
        final["positive_label"] = pd.array([labels[pos[k]] for k in final["positive_key"]], dtype="Int32")
    parquet = root / PAIRS_NAME
    with _writing(PAIRS_NAME):
        write_pairs(to_arrow(final, labels is not None), parquet)
    return FileEntry(path=PAIRS_NAME, bytes=parquet.stat().st_size, sha256=sha256_file(parquet), samples=len(final))


def _write_docs(req: PublishRequest, root: Path, manifest: Manifest) -> None:
    """Manifest, audit (through the request's hook), dataset card, resolved config and extra files."""
    with _writing(MANIFEST_NAME):
        (root / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    with _writing("audit"):
        summary = req.audit(root) if req.audit is not None else None
    with _writing(CARD_NAME):
        (root / CARD_NAME).write_text(render_card(manifest, req.license, summary), encoding="utf-8")
    faults.point("publish.manifest")
    if req.config is not None:
        with _writing("config.yaml"):
            (root / "config.yaml").write_text(yaml.safe_dump(req.config, sort_keys=False, allow_unicode=True),
                                              encoding="utf-8")
    for rel, data in req.extra_files.items():
        with _writing(rel):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)


__all__ = ["PublishRequest", "new_version_dir", "publish", "version_dir"]
