"""``curate``: source -> encoder -> embeddings (cached) -> faiss kNN -> mining -> publish.

All inputs are checked before anything is published. Under torchrun every rank embeds its slice into
the shared cache; rank 0 builds the index, mines and publishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from curation.index import IndexConfig, build_index, search
from curation.mine import MiningConfig, MiningResult, mine
from curation.vectors import drop_degenerate, load_embeddings, normalise_
from semipairs.config import read_yaml
from semipairs.decoded import budget_from_gb
from semipairs.errors import SemipairsError
from semipairs.manifest import EncoderInfo, IndexInfo, MiningInfo, check_name, check_version
from semipairs.publish import PublishRequest, new_version_dir, publish
from semipairs.sources import open_source
from semipairs.sources.base import ImageSource


class CurateConfig(BaseModel):
    """One curation run; YAML keys and CLI flags share these names (flags win)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    encoder: str = "pixels"
    store: Path
    name: str
    version: str = "1.0.0"
    layout: Literal["embedded", "reference"] = "embedded"
    embeddings: Path | None = Field(None, description="precomputed .npy, rows in source order; skips the encoder")
    image_size: int | None = None
    batch_size: int = Field(256, ge=1)
    num_workers: int = Field(2, ge=0)
    chunk_size: int = Field(4096, ge=1)
    dtype: Literal["float32", "float16"] = "float32"
    cache_dir: Path | None = Field(None, description="embedding cache; default STORE/.cache/embeddings")
    device: str | None = None
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast where the hardware has it")
    decode_budget_gb: float | None = Field(None, ge=0, description="pixels / ckpt encoders read a decoded uint8 cache "
                                           "when the source fits (default a quarter of RAM; 0: always stream)")
    metric: Literal["cosine", "l2"] = "cosine"
    exact_max: int = 200_000
    nprobe: int = 32
    shard_size: int = 5000
    audit: bool = Field(True, description="write audit/ (metrics, plots, report.html) into the version")
    mining: MiningConfig = Field(default_factory=MiningConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)  # checked before any image is read, with the message pack gives

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        return check_version(v)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, overrides: dict[str, Any]) -> CurateConfig:
        """YAML file (if any) then flag overrides; mining keys may sit at top level or under ``mining``."""
        raw = read_yaml(yaml_path)
        mining = dict(raw.pop("mining", {}) or {})
        for key in MiningConfig.model_fields:
            if key in raw:
                mining[key] = raw.pop(key)
            if overrides.get(key) is not None:
                mining[key] = overrides.pop(key)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        raw["mining"] = mining
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            where = str(yaml_path) if yaml_path else "options"
            problems = "; ".join(f"--{str(e['loc'][-1]).replace('_', '-')} (key '{'.'.join(map(str, e['loc']))}'): "
                                 f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()[:4])
            raise SemipairsError(f"{where}: invalid curate config: {problems}") from None


@dataclass
class CurateResult:
    path: Path | None  # None on ranks other than 0
    stats: dict[str, Any]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "stats": self.stats, "mining_counts": self.counts}


def mine_embeddings(x: np.ndarray, metric: str, mining: MiningConfig, exact_max: int = 200_000, nprobe: int = 32,
                    progress: bool = True) -> tuple[MiningResult, IndexInfo]:
    """Index + batched kNN search + mining over L2-normalised float32 rows (positions, not keys)."""
    index_cfg = IndexConfig(metric=metric, exact_max=exact_max, nprobe=nprobe, seed=mining.seed)
    index, index_info = build_index(x, index_cfg)
    scores, ids = search(index, x, mining.k, index_cfg.query_batch, progress)
    del index
    return mine(scores, ids, mining), index_info


def _audit_hook(root: Path) -> str:
    from curation.audit import audit
    from semipairs.dataset import PairDataset

    return audit(PairDataset(root), root / "audit").summary_markdown()


def curate(cfg: CurateConfig, progress: bool = True) -> CurateResult:
    """Embed (or load) -> index -> mine -> publish one immutable version; under torchrun rank 0 publishes."""
    new_version_dir(cfg.store, cfg.name, cfg.version)
    source = open_source(cfg.source)
    n = len(source)
    if n == 0:
        raise SemipairsError(f"{cfg.source}: the source holds no images")
    if cfg.mining.k >= n:
        raise SemipairsError(f"k={cfg.mining.k} must be smaller than the number of images ({n})")

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torch is imported only for a torchrun group
        from semipairs.dist import distributed

        with distributed() as (rank, _):
            return _curate(cfg, source, rank, progress)
    return _curate(cfg, source, 0, progress)


def _curate(cfg: CurateConfig, source: ImageSource, rank: int, progress: bool) -> CurateResult:
    n = len(source)
    keys = source.keys()
    if cfg.embeddings is not None:
        emb = load_embeddings(cfg.embeddings, source)
        drop_degenerate(emb, keys)
        normalise_(emb.vectors)
        encoder_info = EncoderInfo(kind="precomputed", name=Path(cfg.embeddings).name, dim=int(emb.vectors.shape[1]))
        from semipairs.hashing import sha256_file

        encoder_info.weights_sha256 = sha256_file(cfg.embeddings)
    else:
        from curation.embed import embed_source
        from curation.encoders import load_encoder

        encoder = load_encoder(cfg.encoder, cfg.image_size)
        cache = cfg.cache_dir or Path(cfg.store) / ".cache" / "embeddings"
        emb = embed_source(source, encoder, cache, cfg.batch_size, cfg.num_workers, cfg.chunk_size, cfg.dtype,
                           cfg.device, progress and rank == 0, precision=cfg.precision,
                           decode_budget=budget_from_gb(cfg.decode_budget_gb))
        drop_degenerate(emb, keys)
        encoder_info = encoder.info
    if rank != 0:
        return CurateResult(None, {}, {})

    good = np.flatnonzero(emb.ok)
    if cfg.mining.k >= len(good):
        raise SemipairsError(f"k={cfg.mining.k} must be smaller than the number of readable images ({len(good)})")
    x = emb.vectors if len(good) == n else emb.vectors[good]  # no copy when every image was readable
    result, index_info = mine_embeddings(np.ascontiguousarray(x, np.float32), cfg.metric, cfg.mining, cfg.exact_max,
                                         cfg.nprobe, progress)
    if result.pairs.empty:
        raise SemipairsError(f"mining found no pair ({result.counts}); loosen min_score, mutual or duplicate_threshold")
    # back from positions among readable images to source positions and keys
    key_arr = np.asarray(keys, dtype=object)[good]
    pairs = pd.DataFrame({
        "anchor_key": key_arr[result.pairs["anchor"].to_numpy()],
        "positive_key": key_arr[result.pairs["positive"].to_numpy()],
        "score": result.pairs["score"].to_numpy(np.float32),
        "rank": result.pairs["rank"].to_numpy(np.int16),
        "mutual": result.pairs["mutual"].to_numpy(bool),
    })
    mining_info = MiningInfo(**cfg.mining.model_dump(), resolved_threshold=result.threshold, counts=result.counts)
    path = publish(PublishRequest(
        store=Path(cfg.store), name=cfg.name, version=cfg.version, source=source, pairs=pairs, layout=cfg.layout,
        encoder=encoder_info, index=index_info, mining=mining_info, config=cfg.model_dump(mode="json"), skipped=emb.skipped,
        shard_size=cfg.shard_size, check_images=False, progress=progress, audit=_audit_hook if cfg.audit else None,
    ))
    from semipairs.dataset import PairDataset

    return CurateResult(path, PairDataset(path).manifest.stats.model_dump(), result.counts)
