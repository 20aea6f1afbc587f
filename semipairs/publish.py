"""Publishing one immutable version: write to a temp dir, verify, then rename into ``STORE/NAME/VERSION``.

Whatever fails on the way, the temp dir is removed and nothing already in the store is touched.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from tqdm.auto import tqdm

from semipairs import __version__
from semipairs.card import render_card
from semipairs.errors import PairsError, StoreError
from semipairs.hashing import content_hash, sha256_file
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
    SkippedImage,
    SourceInfo,
    check_name,
    check_version,
)
from semipairs.shards import PairShardWriter, sample_meta
from semipairs.sources.base import ImageSource, check_image, normalise_ext
from semipairs.table import compute_stats, to_arrow, write_pairs
from semipairs.verify import verify_version

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
    config: dict[str, Any] | None = None
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


def _reencode(data: bytes, ext: str) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        fmt = _PIL_FORMAT.get(ext, "PNG")
        im = im.convert("RGB") if fmt == "JPEG" and im.mode not in ("RGB", "L") else im
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buf.getvalue()


class _ImageReader:
    """Reads each source image at most once for its check; remembers the bad ones."""

    def __init__(self, source: ImageSource, check: bool) -> None:
        self.source, self.check = source, check
        self.pos = source.index_of()
        self.ok: set[str] = set()
        self.bad: dict[str, str] = {s.key: s.reason for s in source.skipped}

    def read(self, key: str) -> tuple[bytes, str] | None:
        if key in self.bad:
            return None
        try:
            item = self.source.read(self.pos[key])
            if self.check and key not in self.ok:
                check_image(item.data)
                self.ok.add(key)
        except Exception as exc:  # noqa: BLE001 - unreadable images are skipped, by contract
            self.bad[key] = f"{type(exc).__name__}: {exc}"
            return None
        return item.data, item.ext


def publish(req: PublishRequest) -> Path:
    """Write, verify and atomically publish one version; return its directory."""
    target = version_dir(req.store, req.name, req.version)
    if target.exists():
        raise StoreError(f"{target}: version {req.version} of {req.name!r} already exists; versions are immutable")
    if req.pairs.empty:
        raise PairsError("no pairs to publish")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{req.version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write(req, tmp)
        report = verify_version(tmp, manifest)
        if not report.ok:
            raise StoreError(f"{target}: verification before publishing failed: {report.problems[0]}")
        try:
            os.rename(tmp, target)  # atomic; fails if a concurrent publish won the race
        except OSError as exc:
            raise StoreError(f"{target}: cannot publish (another writer?): {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write(req: PublishRequest, root: Path) -> Manifest:
    src = req.source
    reader = _ImageReader(src, req.check_images)
    pairs = req.pairs.reset_index(drop=True)
    keep = np.ones(len(pairs), dtype=bool)
    reencoded = 0
    anchors, positives = pairs["anchor_key"].tolist(), pairs["positive_key"].tolist()
    scores, ranks, mutual = pairs["score"].tolist(), pairs["rank"].tolist(), pairs["mutual"].tolist()
    labels = src.labels() if src.has_labels else None
    pos = reader.pos

    def label_of(key: str) -> int | None:
        return labels[pos[key]] if labels is not None else None

    bar: Callable = tqdm if req.progress else (lambda it, **_: it)
    writer = PairShardWriter(root, ext="", maxcount=req.shard_size) if req.layout == "embedded" else None
    pair_id = 0
    try:
        for i in bar(range(len(pairs)), desc=f"publish {req.name} {req.version}", unit="pair"):
            a, p = reader.read(anchors[i]), reader.read(positives[i])
            if a is None or p is None:
                keep[i] = False
                continue
            if writer is None:
                pair_id += 1
                continue
            if not writer.ext:
                writer.ext = normalise_ext(a[1])
            images = []
            for data, ext in (a, p):
                if normalise_ext(ext) != writer.ext:
                    data = _reencode(data, writer.ext)
                    reencoded += 1
                images.append(data)
            meta = {
                "pair_id": pair_id,
                "anchor_key": anchors[i],
                "positive_key": positives[i],
                "score": float(scores[i]),
                "rank": int(ranks[i]),
                "mutual": bool(mutual[i]),
            }
            if labels is not None:
                meta["anchor_label"] = label_of(anchors[i])
                meta["positive_label"] = label_of(positives[i])
            writer.write(pair_id, images[0], images[1], sample_meta(meta))
            pair_id += 1
    finally:
        if writer is not None:
            writer.close()

    final = pairs[keep].reset_index(drop=True)
    if final.empty:
        raise PairsError(f"no pair left: every pair has an unreadable image ({len(reader.bad)} unreadable)")
    final.insert(0, "pair_id", np.arange(len(final), dtype=np.int64))
    if labels is not None:
        final["anchor_label"] = pd.array([label_of(k) for k in final["anchor_key"]], dtype="Int32")
        final["positive_label"] = pd.array([label_of(k) for k in final["positive_key"]], dtype="Int32")
    write_pairs(to_arrow(final, labels is not None), root / PAIRS_NAME)
    parquet = root / PAIRS_NAME
    files = [FileEntry(path=PAIRS_NAME, bytes=parquet.stat().st_size, sha256=sha256_file(parquet), samples=len(final))]
    files += writer.files if writer is not None else []

    skipped = {s.key: s.reason for s in src.skipped} | reader.bad
    manifest = Manifest(
        name=req.name,
        version=req.version,
        created_with=f"semipairs {__version__}",
        layout=req.layout,
        source=SourceInfo(
            uri=src.spec,
            fingerprint=src.fingerprint(),
            num_images=len(src) - len(skipped),
            has_labels=src.has_labels,
            skipped=[SkippedImage(key=k, reason=r) for k, r in sorted(skipped.items())],
        ),
        encoder=req.encoder,
        index=req.index,
        mining=req.mining,
        stats=compute_stats(final, len(src) - len(skipped), reencoded),
        files=files,
        parent=req.parent,
        content_hash=content_hash((f.path, f.sha256) for f in files),
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    summary = req.audit(root) if req.audit is not None else None
    (root / CARD_NAME).write_text(render_card(manifest, req.license, summary), encoding="utf-8")
    if req.config is not None:
        (root / "config.yaml").write_text(yaml.safe_dump(req.config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    for rel, data in req.extra_files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return manifest


__all__ = ["PublishRequest", "publish", "version_dir"]
