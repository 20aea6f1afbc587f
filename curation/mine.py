"""Semantic-pair mining from kNN results: thresholds, mutual-kNN, near-duplicate removal, per-anchor cap,
symmetric de-duplication, optional CSLS hubness correction. Vectorised over the N x k candidate table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator


class MiningConfig(BaseModel):
    """Every parameter lands in the manifest's ``mining`` block."""

    model_config = ConfigDict(extra="forbid")
    strategy: str = "knn"
    k: int = Field(10, ge=1, description="neighbours considered per anchor")
    min_score: float | None = Field(None, description="absolute score threshold")
    min_score_quantile: float | None = Field(None, ge=0, le=1, description="threshold at this quantile of candidate scores")
    mutual: bool = Field(False, description="keep a pair only if each is among the other's k neighbours")
    duplicate_threshold: float | None = Field(0.98, description="scores at or above are near-duplicates, not pairs")
    max_per_anchor: int = Field(1, ge=1)
    symmetric_dedup: bool = Field(True, description="keep one of (i, j) and (j, i)")
    csls: bool = Field(False, description="rank by CSLS (2 s - r_i - r_j) to damp hubs")
    seed: int = 0

    @model_validator(mode="after")
    def _one_threshold(self) -> MiningConfig:
        if self.min_score is not None and self.min_score_quantile is not None:
            raise ValueError("give min_score or min_score_quantile, not both")
        return self


@dataclass
class MiningResult:
    pairs: pd.DataFrame  # anchor (int), positive (int), score, rank, mutual
    counts: dict[str, int] = field(default_factory=dict)
    threshold: float | None = None


def mine(scores: np.ndarray, ids: np.ndarray, cfg: MiningConfig) -> MiningResult:
    """Pairs from ``scores``/``ids`` (N x k, best first, self excluded; every row a readable image)."""
    n, k = ids.shape
    k = min(k, cfg.k)
    scores, ids = scores[:, :k], ids[:, :k]
    anchor = np.repeat(np.arange(n), k)
    pos, sc = ids.ravel(), scores.ravel().astype(np.float32)
    rank = np.tile(np.arange(1, k + 1, dtype=np.int16), n)
    ok = pos >= 0
    counts = {"candidates": int(ok.sum())}

    edge = anchor.astype(np.int64) * n + pos
    rev = pos.astype(np.int64) * n + anchor
    order = np.sort(edge[ok])
    at = np.searchsorted(order, rev)
    is_mutual = ok & (order[np.clip(at, 0, len(order) - 1)] == rev) if len(order) else np.zeros_like(ok)

    rank_score = sc
    if cfg.csls:
        r = scores.mean(axis=1).astype(np.float32)
        rank_score = 2 * sc - r[anchor] - r[np.clip(pos, 0, n - 1)]

    if cfg.duplicate_threshold is not None:
        dup = ok & (sc >= cfg.duplicate_threshold)
        counts["near_duplicates"] = int(dup.sum())
        ok &= ~dup
    threshold = cfg.min_score
    if cfg.min_score_quantile is not None and ok.any():
        threshold = float(np.quantile(rank_score[ok], cfg.min_score_quantile))
    if threshold is not None:
        low = ok & (rank_score < threshold)
        counts["below_threshold"] = int(low.sum())
        ok &= ~low
    if cfg.mutual:
        counts["not_mutual"] = int((ok & ~is_mutual).sum())
        ok &= is_mutual

    sel = np.flatnonzero(ok)
    df = pd.DataFrame({"anchor": anchor[sel], "positive": pos[sel], "score": sc[sel], "rank_score": rank_score[sel],
                       "mutual": is_mutual[sel]})
    if cfg.csls:  # CSLS re-ranks neighbours within each anchor
        df = df.sort_values(["anchor", "rank_score"], ascending=[True, False], kind="stable")
    df["rank"] = (df.groupby("anchor").cumcount() + 1).astype(np.int16) if cfg.csls else rank[sel]
    before = len(df)
    df = df[df.groupby("anchor").cumcount() < cfg.max_per_anchor]
    counts["over_max_per_anchor"] = before - len(df)
    if cfg.symmetric_dedup and len(df):
        lo = np.minimum(df["anchor"].to_numpy(), df["positive"].to_numpy())
        hi = np.maximum(df["anchor"].to_numpy(), df["positive"].to_numpy())
        dup = pd.Series(lo.astype(np.int64) * n + hi).duplicated(keep="first").to_numpy()
        counts["symmetric_duplicates"] = int(dup.sum())
        df = df[~dup]
    counts["pairs"] = len(df)
    return MiningResult(df.drop(columns="rank_score").reset_index(drop=True), counts, threshold)
