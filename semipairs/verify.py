"""``verify``: checksums, sample counts and parquet-vs-shards agreement of one version directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from semipairs.errors import SemipairsError
from semipairs.hashing import content_hash, sha256_file
from semipairs.manifest import DATA_DIR, PAIRS_NAME, Manifest, read_manifest
from semipairs.shards import iter_shard, pair_key
from semipairs.table import read_pairs


@dataclass
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    path: str
    files_checked: int = 0
    samples_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "samples_checked": self.samples_checked,
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
        }


def verify_version(version_dir: str | Path, manifest: Manifest | None = None, samples: bool = True) -> VerifyReport:
    """Check every file against the manifest; never raises for a data problem, lists it instead.

    ``samples=False`` skips reading every shard sample back (keys and pair ids against the table) and checks
    only the shards' sizes, sha256 and sample counts: what ``publish`` runs on shards it has just streamed
    and hashed itself, where an equal on-disk sha256 already proves the bytes are the ones it wrote."""
    root = Path(version_dir)
    report = VerifyReport(str(root))
    try:
        manifest = manifest or read_manifest(root)
    except SemipairsError as exc:
        report.problems.append(Problem("semipairs.json", str(exc)))
        return report
    _check_files(root, manifest, report)
    _check_unlisted(root, manifest, report)
    df = _check_table(root, manifest, report)
    if df is not None:
        _check_shards(root, manifest, df, report, samples)
    return report


def _check_files(root: Path, manifest: Manifest, report: VerifyReport) -> None:
    """Every listed file exists with its size and sha256; the content_hash covers them."""
    hashes_ok = True
    for entry in manifest.files:
        p = root / entry.path
        report.files_checked += 1
        if not p.is_file():
            report.problems.append(Problem(entry.path, "missing"))
            hashes_ok = False
            continue
        size = p.stat().st_size
        if size != entry.bytes:
            report.problems.append(Problem(entry.path, f"size {size} bytes, manifest says {entry.bytes}"))
        if sha256_file(p) != entry.sha256:
            report.problems.append(Problem(entry.path, "sha256 mismatch (file changed or corrupt)"))
            hashes_ok = False
    if hashes_ok and content_hash((f.path, f.sha256) for f in manifest.files) != manifest.content_hash:
        report.problems.append(Problem("semipairs.json", "content_hash does not match the files' hashes"))


def _check_unlisted(root: Path, manifest: Manifest, report: VerifyReport) -> None:
    listed = {f.path for f in manifest.files}
    data = root / DATA_DIR
    if data.is_dir():
        for extra in sorted(data.iterdir()):
            rel = f"{DATA_DIR}/{extra.name}"
            if rel not in listed:
                report.problems.append(Problem(rel, "file not listed in the manifest"))


def _check_table(root: Path, manifest: Manifest, report: VerifyReport) -> pd.DataFrame | None:
    """pairs.parquet is listed, readable, as long as the stats say, with pair ids 0..N-1; the table or None."""
    if PAIRS_NAME not in {f.path for f in manifest.files}:
        report.problems.append(Problem(PAIRS_NAME, "not listed in the manifest"))
        return None
    try:
        df = read_pairs(root / PAIRS_NAME)
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        report.problems.append(Problem(PAIRS_NAME, f"unreadable: {exc}"))
        return None
    if len(df) != manifest.stats.num_pairs:
        report.problems.append(Problem(PAIRS_NAME, f"{len(df)} rows, manifest stats say {manifest.stats.num_pairs}"))
    if not (df["pair_id"].to_numpy() == range(len(df))).all():
        report.problems.append(Problem(PAIRS_NAME, "pair_id is not 0..N-1 in order"))
    return df


def _check_shards(root: Path, manifest: Manifest, df: pd.DataFrame, report: VerifyReport, samples: bool = True) -> None:
    """Shards hold exactly the table's pairs, in order, with the same keys (a reference layout holds none)."""
    shards = manifest.shard_files()
    if manifest.layout == "reference":
        if shards:
            report.problems.append(Problem(DATA_DIR, "a reference-layout version must not list shards"))
        return
    total = sum(f.samples or 0 for f in shards)
    if total != len(df):
        report.problems.append(Problem(DATA_DIR, f"shards hold {total} samples, {PAIRS_NAME} has {len(df)} rows"))
    if not samples:
        return
    anchors, positives = df["anchor_key"].tolist(), df["positive_key"].tolist()
    row = 0
    for n, entry in enumerate(shards):
        if not (root / entry.path).is_file():
            continue
        try:
            for sample in iter_shard(root / entry.path, entry.samples):
                meta = json.loads(sample["json"])
                pid = meta.get("pair_id")
                if sample["__key__"] != pair_key(row) or pid != row:
                    report.problems.append(
                        Problem(entry.path, f"sample {sample['__key__']!r} (pair_id {pid}) where pair {row} belongs"))
                    break
                if row < len(df) and (meta.get("anchor_key") != anchors[row] or meta.get("positive_key") != positives[row]):
                    report.problems.append(Problem(entry.path, f"pair {row}: keys differ from {PAIRS_NAME}"))
                    break
                row += 1
                report.samples_checked += 1
        except SemipairsError as exc:
            report.problems.append(Problem(entry.path, str(exc).removeprefix(str(root / entry.path) + ": ")))
            row = sum(f.samples or 0 for f in shards[: n + 1])
