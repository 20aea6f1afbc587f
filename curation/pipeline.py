"""``curate``: source -> encoder -> embeddings (cached) -> faiss kNN -> mining -> publish.

All inputs are checked before anything is published. Under torchrun every rank embeds its slice into
the shared cache; rank 0 builds the index and writes it once, every rank searches its slice of the
queries (``curation.ranks``), rank 0 mines and publishes. Embeddings given as files stay on disk, read in chunks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from curation.config import CurateConfig
from curation.index import IndexConfig, build_index, measure_recall, search
from curation.mine import MiningConfig, MiningResult, mine
from curation.vectors import Embeddings, Rows, drop_degenerate, load_embeddings
from semipairs.budget import budget_from_gb, default_budget_bytes
from semipairs.dataset import PairDataset
from semipairs.errors import SemipairsError
from semipairs.lock import exclusive
from semipairs.manifest import EncoderInfo, IndexInfo, MiningInfo, ParentRef
from semipairs.publish import PublishRequest, new_version_dir, publish, version_dir
from semipairs.sources import open_source
from semipairs.sources.base import ImageSource


@dataclass
class CurateResult:
    path: Path | None  # None on ranks other than 0
    stats: dict[str, Any]
    counts: dict[str, int]
    index: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "stats": self.stats, "mining_counts": self.counts,
                "index": self.index, "seconds": self.seconds}


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - t, 3)


def mine_embeddings(x: np.ndarray | Rows, metric: str, mining: MiningConfig, index_cfg: IndexConfig | None = None,
                    progress: bool = True, seconds: dict[str, float] | None = None, agree: np.ndarray | None = None
                    ) -> tuple[MiningResult, IndexInfo]:
    """Index + chunked kNN search + recall on a sample + mining over rows (positions, not keys); ``x`` is a
    normalised float32 array or ``Rows`` over ``.npy`` files. ``seconds`` collects each stage's wall time;
    ``agree`` is a second encoder's neighbour ids of the same rows (``mine``)."""
    index_cfg = index_cfg or IndexConfig(metric=metric, seed=mining.seed)
    seconds = {} if seconds is None else seconds
    scores, ids, index_info = _neighbours(x, index_cfg, mining.k, progress, seconds)
    return _mine_measured(x, scores, ids, index_info, index_cfg, mining, seconds, agree)


def _neighbours(x: np.ndarray | Rows, index_cfg: IndexConfig, k: int, progress: bool, seconds: dict[str, float]
                ) -> tuple[np.ndarray, np.ndarray, IndexInfo]:
    with _timed(seconds, "index"):
        index, index_info = build_index(x, index_cfg, progress)
    with _timed(seconds, "search"):
        scores, ids = search(index, x, k, index_cfg.query_batch, progress)
    return scores, ids, index_info


def _mine_measured(x: np.ndarray | Rows, scores: np.ndarray, ids: np.ndarray, info: IndexInfo, index_cfg: IndexConfig,
                   mining: MiningConfig, seconds: dict[str, float], agree: np.ndarray | None = None
                   ) -> tuple[MiningResult, IndexInfo]:
    """Recall@k of an approximate index on sampled queries (exact search is 1.0 by construction), then mining."""
    with _timed(seconds, "recall"):
        if info.factory == "Flat":
            info = info.model_copy(update={"recall_at_k": 1.0, "recall_k": mining.k, "recall_queries": 0})
        elif index_cfg.recall_queries:
            rows = x if isinstance(x, Rows) else Rows(x)
            info = info.model_copy(update=measure_recall(rows, ids, mining.k, index_cfg.metric, index_cfg.recall_queries,
                                                         index_cfg.seed))
    with _timed(seconds, "mine"):
        return mine(scores, ids, mining, agree), info


def index_config(cfg: CurateConfig) -> IndexConfig:
    return IndexConfig(metric=cfg.metric, factory=cfg.index, exact_max=cfg.exact_max, nprobe=cfg.nprobe,
                       budget_bytes=budget_from_gb(cfg.index_budget_gb) or default_budget_bytes(),
                       recall_queries=cfg.recall_queries, seed=cfg.mining.seed)


def _audit_hook(source: ImageSource):
    """The publish hook writing the default audit, reading the already-open source (no second scan)."""
    def hook(root: Path) -> str:
        from curation.audit import audit

        return audit(PairDataset(root), root / "audit", source=source).summary_markdown()
    return hook


def curate(cfg: CurateConfig, progress: bool = True) -> CurateResult:
    """Embed (or load) -> index -> mine -> publish one immutable version; under torchrun rank 0 publishes."""
    new_version_dir(cfg.store, cfg.name, cfg.version)
    if cfg.key_column or cfg.label_column:
        from semipairs.sources.embeddings import with_columns

        cfg = cfg.model_copy(update={"source": with_columns(cfg.source, cfg.key_column, cfg.label_column)})
    source = open_source(cfg.source)
    n = len(source)
    if n == 0:
        raise SemipairsError(f"{cfg.source}: the source holds no images")
    if cfg.mining.k >= n:
        raise SemipairsError(f"k={cfg.mining.k} must be smaller than the number of images ({n})")
    if not source.has_images:
        if cfg.layout == "embedded":
            raise SemipairsError(f"--layout embedded: {cfg.source} holds embeddings, not images; publish the reference "
                                 "layout (pairs by key, resolved against your own copy of the images)")
        if cfg.embeddings is not None:
            raise SemipairsError(f"--embeddings: {cfg.source} brings its own embeddings; give one or the other")
        if cfg.agree_with is not None:
            raise SemipairsError(f"--agree-with: {cfg.source} holds embeddings, not images, so a second encoder has "
                                 "nothing to read")
    if cfg.agree_with is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SemipairsError("--agree-with runs in one process for now; run curate without torchrun")
    cfg = cfg.model_copy(update={"layout": cfg.layout or ("embedded" if source.has_images else "reference")})

    # one writer per version: a second curate (or pack) of it is refused before it embeds anything
    target = version_dir(cfg.store, cfg.name, cfg.version)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with exclusive(target, f"publishing {cfg.name} {cfg.version}") if rank0 else nullcontext():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torch is imported only for a torchrun group
            from semipairs.dist import distributed

            with distributed() as (rank, _):
                return _curate(cfg, source, rank, progress)
        return _curate(cfg, source, 0, progress)


class Encoded(NamedTuple):
    emb: Embeddings
    info: EncoderInfo
    parent: ParentRef | None = None  # the pair dataset a ``ckpt:`` encoder was trained with (train -> mine rounds)


def _embeddings(cfg: CurateConfig, source: ImageSource, keys: list[str], progress: bool) -> Encoded:
    """The rows to search (memory-mapped where they come from files) and the encoder they came from."""
    if not source.has_images:  # embeddings:DIR: vectors checked in place, a bad row is the user's bug to fix
        source.check_rows()
        emb = Embeddings(source.vectors, np.ones(len(source), bool))
        return Encoded(emb, EncoderInfo(kind="precomputed", name=f"embeddings:{Path(source.root).name}",
                                        dim=source.vectors.shape[1]))
    if cfg.embeddings is not None:
        from semipairs.hashing import sha256_file

        emb = load_embeddings(cfg.embeddings, source)
        drop_degenerate(emb, keys)
        return Encoded(emb, EncoderInfo(kind="precomputed", name=Path(cfg.embeddings).name,
                                        dim=int(emb.vectors.shape[1]), weights_sha256=sha256_file(cfg.embeddings)))
    return _encoded(cfg, source, cfg.encoder, keys, progress)


def _encoded(cfg: CurateConfig, source: ImageSource, spec: str, keys: list[str], progress: bool) -> Encoded:
    from curation.embed import embed_source
    from curation.encoders import load_encoder

    encoder = load_encoder(spec, cfg.image_size)
    cache = cfg.cache_dir or Path(cfg.store) / ".cache" / "embeddings"
    emb = embed_source(source, encoder, cache, cfg.batch_size, cfg.num_workers, cfg.chunk_size, cfg.dtype,
                       cfg.device, progress, precision=cfg.precision, decode_budget=budget_from_gb(cfg.decode_budget_gb))
    drop_degenerate(emb, keys)
    return Encoded(emb, encoder.info, ParentRef(**encoder.trained_on) if encoder.trained_on else None)


def _curate(cfg: CurateConfig, source: ImageSource, rank: int, progress: bool) -> CurateResult:
    n = len(source)
    keys = source.keys()
    seconds: dict[str, float] = {}
    with _timed(seconds, "embeddings"):
        first = _embeddings(cfg, source, keys, progress and rank == 0)
        second = _encoded(cfg, source, cfg.agree_with, keys, progress) if cfg.agree_with else None
    emb = first.emb
    if second is not None:  # a row either encoder cannot use is left out of both searches
        row_of = source.index_of()
        emb.skipped.extend(s for s in second.emb.skipped if emb.ok[row_of[s.key]])
        emb.ok &= second.emb.ok
    good = np.flatnonzero(emb.ok)
    if cfg.mining.k >= len(good):
        raise SemipairsError(f"k={cfg.mining.k} must be smaller than the number of readable images ({len(good)})")
    rows = Rows(emb.vectors, None if len(good) == n else good)  # read chunk by chunk, never copied whole
    icfg = index_config(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from curation.ranks import search_over_ranks

        with _timed(seconds, "index_and_search"):
            found = search_over_ranks(rows, icfg, cfg.mining.k, cfg.cache_dir or Path(cfg.store) / ".cache", progress)
        if found is None:  # a rank other than 0: its slice is searched, rank 0 mines and publishes
            return CurateResult(None, {}, {})
        result, index_info = _mine_measured(rows, *found, icfg, cfg.mining, seconds)
    else:
        agree = None
        if second is not None:
            with _timed(seconds, "agreement"):
                agree = _neighbours(Rows(second.emb.vectors, None if len(good) == n else good), icfg, cfg.mining.k,
                                    progress, {})[1]
        result, index_info = mine_embeddings(rows, cfg.metric, cfg.mining, icfg, progress, seconds, agree)
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
    agreed = {"agree_with": second.info.model_dump(exclude_none=True)} if second is not None else {}
    mining_info = MiningInfo(**cfg.mining.model_dump(), resolved_threshold=result.threshold, counts=result.counts,
                             **agreed)
    with _timed(seconds, "publish"):
        path = _publish(cfg, source, pairs, first, index_info, mining_info, progress)
    manifest = PairDataset(path).manifest
    return CurateResult(path, manifest.stats.model_dump(), result.counts, manifest.index.model_dump(), seconds)


def _publish(cfg: CurateConfig, source: ImageSource, pairs: pd.DataFrame, encoded: Encoded, index_info: IndexInfo,
             mining_info: MiningInfo, progress: bool) -> Path:
    return publish(PublishRequest(
        store=Path(cfg.store), name=cfg.name, version=cfg.version, source=source, pairs=pairs, layout=cfg.layout,
        encoder=encoded.info, index=index_info, mining=mining_info, parent=encoded.parent,
        config=cfg.model_dump(mode="json"), skipped=encoded.emb.skipped,
        shard_size=cfg.shard_size, check_images=False, progress=progress, audit=_audit_hook(source) if cfg.audit else None,
    ))
