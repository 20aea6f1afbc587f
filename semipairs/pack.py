"""``pack``: turn a pair list made elsewhere (anchor_key, positive_key[, score]) into a published version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from semipairs.errors import PairsError
from semipairs.manifest import DatasetName, Layout, MiningInfo, SemVer
from semipairs.publish import PublishRequest, new_version_dir, publish
from semipairs.sources import open_source
from semipairs.sources.base import ImageSource
from semipairs.table import read_pair_list


class PackConfig(BaseModel):
    """One ``pack``; YAML keys and flags share these names (flags win)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="Image source holding the keys (imagefolder:DIR, webdataset:PATTERN, digits, ...).")
    pairs: Path = Field(description="Pair list (.csv/.tsv/.parquet) with anchor_key, positive_key and optional score.")
    store: Path = Field(description="Store root; the version lands in STORE/NAME/VERSION.")
    name: DatasetName = Field(description="Dataset name.")
    version: SemVer = Field("1.0.0", description="Semver version; an existing version is never overwritten.")
    layout: Layout = Field("embedded", description="embedded (images in shards) or reference (keys only).")
    shard_size: int = Field(5000, ge=1, description="Pairs per shard.")


def complete_pairs(df: pd.DataFrame, source: ImageSource, where: str) -> tuple[pd.DataFrame, int]:
    """Check keys against the source, drop duplicate rows, add ``rank`` and ``mutual``.

    ``rank`` is a pair's 1-based position among its anchor's rows in list order; ``mutual`` says
    whether the reverse pair is listed too. Returns the table and the number of duplicates dropped.
    """
    unknown = source.unknown_keys(pd.concat([df["anchor_key"], df["positive_key"]]))
    if unknown:
        raise PairsError(f"{where}: {len(unknown)} key(s) not in source {source.spec}: {unknown[:5]}")
    selfs = np.flatnonzero((df["anchor_key"] == df["positive_key"]).to_numpy())
    if selfs.size:
        raise PairsError(f"{where}: row(s) {selfs[:5].tolist()} pair an image with itself")
    before = len(df)
    df = df.drop_duplicates(["anchor_key", "positive_key"]).reset_index(drop=True)
    df["rank"] = (df.groupby("anchor_key", sort=False).cumcount() + 1).astype(np.int16)
    forward = set(zip(df["anchor_key"], df["positive_key"]))
    df["mutual"] = [(p, a) in forward for a, p in zip(df["anchor_key"], df["positive_key"])]
    return df, before - len(df)


def pack(
    source: str,
    pairs: str | Path,
    store: str | Path,
    name: str,
    version: str,
    layout: Layout = "embedded",
    shard_size: int = 5000,
    progress: bool = True,
) -> Path:
    """Validate everything first (names, keys, target), then publish; returns the version directory."""
    new_version_dir(store, name, version)
    src = open_source(source)
    df, dupes = complete_pairs(read_pair_list(pairs), src, str(pairs))
    config = {"command": "pack", "source": source, "pairs": str(pairs), "store": str(store), "name": name,
              "version": version, "layout": layout, "shard_size": shard_size}
    return publish(
        PublishRequest(
            store=Path(store), name=name, version=version, source=src, pairs=df, layout=layout,
            mining=MiningInfo(strategy="external", pairs_file=Path(pairs).name, duplicates_dropped=dupes),
            config=config, shard_size=shard_size, progress=progress,
        )
    )
