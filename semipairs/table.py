"""``pairs.parquet``: the pair table's schema, its stats, and user pair lists (CSV / parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semipairs.errors import PairsError
from semipairs.manifest import Stats

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


def pairs_schema(with_labels: bool) -> pa.Schema:
    fields = [
        pa.field("pair_id", pa.int64(), nullable=False),
        pa.field("anchor_key", pa.string(), nullable=False),
        pa.field("positive_key", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("rank", pa.int16()),
        pa.field("mutual", pa.bool_()),
    ]
    if with_labels:
        fields += [pa.field("anchor_label", pa.int32()), pa.field("positive_label", pa.int32())]
    return pa.schema(fields)


def to_arrow(df: pd.DataFrame, with_labels: bool) -> pa.Table:
    """The pair table in the contract's schema, without pandas metadata (byte-stable output)."""
    schema = pairs_schema(with_labels)
    cols = {}
    for f in schema:
        if f.name not in df:
            raise PairsError(f"pair table lacks column {f.name!r}")
        cols[f.name] = pa.array(df[f.name].to_numpy(), type=f.type, from_pandas=True)
    return pa.table(cols, schema=schema)


def write_pairs(table: pa.Table, path: str | Path) -> None:
    pq.write_table(table, path, compression="zstd", write_statistics=True, store_schema=False)


def read_pairs(path: str | Path) -> pd.DataFrame:
    """Read pairs.parquet into pandas, keeping nullable integer labels."""
    return pq.read_table(path).to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)


def score_quantiles(scores: np.ndarray, quantiles: dict[str, float] | None = None) -> dict[str, float]:
    """Named quantiles of the finite scores ({} when there is none): the card's, the manifest's and the audit's."""
    scores = scores[np.isfinite(scores)]
    return {k: float(np.quantile(scores, q)) for k, q in (quantiles or QUANTILES).items()} if scores.size else {}


def compute_stats(df: pd.DataFrame, num_images: int, reencoded: int = 0) -> Stats:
    """Pair counts, coverage and score quantiles; label precision when both labels are known."""
    n = len(df)
    anchors = df["anchor_key"].nunique() if n else 0
    in_pairs = pd.unique(pd.concat([df["anchor_key"], df["positive_key"]])).size if n else 0
    quantiles = score_quantiles(df["score"].to_numpy(dtype=np.float64) if n else np.empty(0))
    precision = None
    if "anchor_label" in df and n:
        known = df["anchor_label"].notna() & df["positive_label"].notna()
        if known.any():
            same = df.loc[known, "anchor_label"] == df.loc[known, "positive_label"]
            precision = float(same.mean())
    return Stats(
        num_pairs=n,
        num_anchors=int(anchors),
        coverage=float(anchors / num_images) if num_images else 0.0,
        images_in_pairs=float(in_pairs / num_images) if num_images else 0.0,
        score_quantiles=quantiles,
        label_precision=precision,
        reencoded=reencoded,
    )


def read_pair_list(path: str | Path) -> pd.DataFrame:
    """A user's pair list (CSV or parquet) with columns anchor_key, positive_key and optional score.

    Keys are read as strings (``0001`` stays ``0001``). Errors name the file and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: pair list not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pq.read_table(path).to_pandas()
        elif suffix in {".csv", ".tsv"}:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        else:
            raise PairsError(f"{path}: pair list must be .csv, .tsv or .parquet")
    except PairsError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the file whatever the parser says
        raise PairsError(f"{path}: cannot read pair list: {exc}") from None
    missing = [c for c in ("anchor_key", "positive_key") if c not in df.columns]
    if missing:
        raise PairsError(f"{path}: missing column(s) {missing}; found {list(df.columns)[:10]}")
    out = pd.DataFrame({"anchor_key": df["anchor_key"].astype(str), "positive_key": df["positive_key"].astype(str)})
    if "score" in df.columns:
        score = pd.to_numeric(df["score"].replace("", np.nan), errors="coerce")
        bad = score.isna() & (df["score"].astype(str) != "") & df["score"].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise PairsError(f"{path}: column 'score' row {row} is not a number: {df['score'].iloc[row]!r}")
        out["score"] = score.astype(np.float32)
    else:
        out["score"] = np.float32(np.nan)
    if out.empty:
        raise PairsError(f"{path}: the pair list has no rows")
    return out
