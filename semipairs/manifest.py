"""The ``semipairs.json`` manifest of one pair-dataset version (format version 1).

The manifest is the contract between curation, the store and every reader: pydantic validates it on
write and on read, and a reader refuses a format_version it does not know before anything else.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from semipairs.errors import FormatVersionError, InvalidValueError, ManifestError

FORMAT_NAME = "semipairs"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
MANIFEST_NAME = "semipairs.json"
PAIRS_NAME = "pairs.parquet"
CARD_NAME = "README.md"
DATA_DIR = "data"

Layout = Literal["embedded", "reference"]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_version(version: str) -> str:
    """Return ``version`` if it is semver (``1.0.0``, ``0.2.0-rc.1``), else raise ValueError."""
    if not _SEMVER.match(version):
        raise InvalidValueError(f"version {version!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    return version


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe dataset name (letters, digits, '.', '_', '-')."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise InvalidValueError(
            f"dataset name {name!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_' or '-' (at most 96 characters)"
        )
    return name


DatasetName = Annotated[str, AfterValidator(check_name)]  # a field checked like ``pack`` checks --name
SemVer = Annotated[str, AfterValidator(check_version)]


def semver_key(version: str) -> tuple:
    """Sort key for semver strings: a release sorts after its pre-releases."""
    m = _SEMVER.match(version)
    if not m:
        raise InvalidValueError(f"version {version!r} is not semver")
    major, minor, patch, pre, _build = m.groups()
    if pre is None:
        pre_key: tuple = (1,)
    else:
        pre_key = (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (int(major), int(minor), int(patch), pre_key)


class _Model(BaseModel):
    # A field this reader does not know (written by a newer release of format 1) is ignored, not refused;
    # a known field of the wrong type is an error naming it.
    model_config = ConfigDict(extra="ignore")


class SkippedImage(_Model):
    key: str
    reason: str


class SourceInfo(_Model):
    uri: str
    fingerprint: str
    num_images: int = Field(ge=0)
    has_labels: bool
    skipped: list[SkippedImage] = Field(default_factory=list)


class EncoderInfo(_Model):
    """The encoder that found the pairs; ``kind='external'`` for pairs packed from a user's list."""

    kind: str
    name: str | None = None
    pretrained: str | None = None
    weights_sha256: str | None = None
    dim: int | None = None
    image_size: int | None = None


class IndexInfo(BaseModel):
    """Search index; free-form beyond factory and metric (nprobe, nlist, gpu...)."""

    model_config = ConfigDict(extra="allow")
    factory: str
    metric: Literal["cosine", "ip", "l2", "external"]


class MiningInfo(BaseModel):
    """The strategy and every parameter that shaped the pair list, plus the seed."""

    model_config = ConfigDict(extra="allow")
    strategy: str
    seed: int = 0


class Stats(_Model):
    num_pairs: int = Field(ge=0)
    num_anchors: int = Field(ge=0)
    coverage: float = Field(ge=0.0, le=1.0, description="share of source images that anchor a pair")
    images_in_pairs: float = Field(ge=0.0, le=1.0, description="share of source images in any pair")
    score_quantiles: dict[str, float] = Field(default_factory=dict)
    label_precision: float | None = None
    reencoded: int = Field(default=0, ge=0, description="images re-encoded to the shard format")


class FileEntry(_Model):
    path: str
    bytes: int = Field(ge=0)
    sha256: str
    samples: int | None = None

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts:
            raise InvalidValueError(f"file path {v!r} must be relative and stay inside the version directory")
        return v


class ParentRef(_Model):
    name: str
    version: str
    content_hash: str


class ReviewRecord(_Model):
    """How a version derived from a reviewed one was cut: the judgments behind it and the estimate they gave."""

    reviewed_version: str
    judged: int = Field(ge=0, description="pairs judged same or different")
    same: int = Field(ge=0)
    different: int = Field(ge=0)
    unsure: int = Field(ge=0)
    disputed: int = Field(0, ge=0, description="pairs reviewers disagreed on (left out of the estimate)")
    reviewers: list[str] = Field(default_factory=list)
    precision: float | None = Field(None, ge=0.0, le=1.0, description="estimated share of same-kind pairs")
    low: float | None = Field(None, ge=0.0, le=1.0, description="95% interval, lower end")
    high: float | None = Field(None, ge=0.0, le=1.0, description="95% interval, upper end")
    method: str = "stratified by score band, Wilson interval at the effective sample size"
    rejected: int = Field(0, ge=0, description="pairs judged different, removed")
    target_precision: float | None = None
    threshold: float | None = Field(None, description="score below which pairs were cut, when a target was given")
    cut: int = Field(0, ge=0, description="pairs removed by the threshold")
    kept_precision: float | None = Field(None, description="estimated precision of the pairs kept")


class Manifest(_Model):
    format: Literal["semipairs"] = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    name: DatasetName
    version: SemVer
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    created_with: str
    layout: Layout
    source: SourceInfo
    encoder: EncoderInfo
    index: IndexInfo
    mining: MiningInfo
    stats: Stats
    files: list[FileEntry]
    parent: ParentRef | None = None
    review: ReviewRecord | None = None
    content_hash: str

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        check_format_version(v)
        return v

    def shard_files(self) -> list[FileEntry]:
        return [f for f in self.files if f.path.startswith(DATA_DIR + "/")]

    def ref(self) -> ParentRef:
        """This version as another one's ``parent`` (a reviewed cut, or pairs mined by a model trained on it)."""
        return ParentRef(name=self.name, version=self.version, content_hash=self.content_hash)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def check_format_version(version: Any, where: str = "manifest") -> None:
    if version not in SUPPORTED_FORMAT_VERSIONS:
        known = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise FormatVersionError(
            f"{where}: format_version {version!r} is not supported; this semipairs reads format_version "
            f"{known}. Upgrade semipairs to read newer datasets."
        )


def parse_manifest(raw: dict[str, Any], where: str = "semipairs.json") -> Manifest:
    """Validate a manifest dict; format and format_version are checked first, with their own error."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT_NAME:
        raise FormatVersionError(f"{where}: field 'format' is {raw.get('format')!r}, expected 'semipairs'")
    if "format_version" not in raw:
        raise FormatVersionError(f"{where}: field 'format_version' is missing")
    check_format_version(raw["format_version"], where)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()[:5]
        )
        raise ManifestError(f"{where}: invalid manifest: {problems}") from None


def read_manifest(version_dir: str | Path) -> Manifest:
    """Read and validate ``VERSION_DIR/semipairs.json``."""
    path = Path(version_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest here (is this a semipairs dataset version directory?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from None
    manifest = parse_manifest(raw, str(path))
    check_links(Path(version_dir), manifest, str(path))
    return manifest


def check_links(root: Path, manifest: Manifest, where: str) -> None:
    """Refuse, before any listed file is opened, a listed file that is a link (or lies under one) resolving
    outside the version directory. The one other place allowed is the blob store of a Hugging Face cache
    snapshot (``REPO/snapshots/REV`` links into ``REPO/blobs``), where huggingface_hub puts every download."""
    base = root.resolve()
    allowed = [base] + ([base.parent.parent / "blobs"] if base.parent.name == "snapshots" else [])
    for i, entry in enumerate(manifest.files):
        real = (root / entry.path).resolve()
        if real == base / entry.path:  # no link on the way
            continue
        if not any(real == a or a in real.parents for a in allowed):
            raise ManifestError(f"{where}: field 'files.{i}.path' ({entry.path!r}) is a link leading outside the "
                                f"version directory (to {real}); refused")
