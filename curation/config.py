"""The configs of ``curate``: ``CurateConfig`` with its ``MiningConfig`` block, torch- and faiss-free, so the
CLI builds its options (help text, shown default) from them (``semipairs.config``). Mining keys may sit
at the top level of a YAML file or under ``mining``; flags name them without the prefix (``--k``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from semipairs.config import PRECISION_HELP, load_config
from semipairs.errors import InvalidValueError
from semipairs.manifest import DatasetName, SemVer


class MiningConfig(BaseModel):
    """Every parameter lands in the manifest's ``mining`` block."""

    model_config = ConfigDict(extra="forbid")
    strategy: str = "knn"
    k: int = Field(10, ge=1, description="Neighbours considered per image.")
    min_score: float | None = Field(None, description="Absolute similarity threshold.")
    min_score_quantile: float | None = Field(None, ge=0, le=1, description="Threshold at this quantile of candidate "
                                             "scores.")
    mutual: bool = Field(False, description="Keep only mutual nearest neighbours (each among the other's k).")
    duplicate_threshold: float | None = Field(0.98, description="Scores at or above are near-duplicates, not pairs.")
    max_per_anchor: int = Field(1, ge=1, description="Pairs kept per anchor.")
    symmetric_dedup: bool = Field(True, description="keep one of (i, j) and (j, i)")
    csls: bool = Field(False, description="CSLS hubness correction: rank by 2 s - r_i - r_j.")
    seed: int = Field(0, description="Seed (IVF training sample, recall sample).")

    @model_validator(mode="after")
    def _one_threshold(self) -> MiningConfig:
        if self.min_score is not None and self.min_score_quantile is not None:
            raise InvalidValueError("give min_score or min_score_quantile, not both")
        return self


class CurateConfig(BaseModel):
    """One curation run; YAML keys and CLI flags share these names (flags win)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="Image source: imagefolder:DIR, webdataset:PATTERN, digits, cifar10:ROOT, "
                        "hf:OWNER/NAME[@REV][:SPLIT], or embeddings:DIR[#key=COLUMN,label=COLUMN] (clip-retrieval's "
                        "img_emb/ + metadata/ folders; keys from image_path by default; publishes the reference layout, "
                        "reads no image).")
    encoder: str = Field("pixels", description="open_clip:MODEL[/TAG|FILE], timm:NAME[/FILE], "
                         "torchvision:NAME[/W|FILE|random], ckpt:PATH or pixels[:SIZE] (the image downsampled to 16x16, "
                         "mean removed: a no-model baseline; use a real encoder for semantic pairs).")
    store: Path = Field(description="Store root; the version lands in STORE/NAME/VERSION.")
    name: DatasetName = Field(description="Dataset name.")
    version: SemVer = Field("1.0.0", description="Semver version.")
    layout: Literal["embedded", "reference"] | None = Field(
        None, description="embedded (images in shards) or reference (default embedded; reference for embeddings:DIR).")
    embeddings: Path | None = Field(None, description="Precomputed .npy embeddings in source order (skips the encoder).")
    agree_with: str | None = Field(None, description="A second encoder (same specs as --encoder): keep a pair only "
                                   "when its positive is also among this encoder's k nearest neighbours of the anchor. "
                                   "Fewer, more precise pairs (two encoders rarely agree on a wrong partner).")
    image_size: int | None = Field(None, description="Encoder input size override.")
    batch_size: int = Field(256, ge=1, description="Embedding batch size.")
    num_workers: int = Field(2, ge=0, description="DataLoader decode workers.")
    chunk_size: int = Field(4096, ge=1)
    dtype: Literal["float32", "float16"] = Field("float32", description="Cache dtype: float32 or float16.")
    cache_dir: Path | None = Field(None, description="embedding cache; default STORE/.cache/embeddings")
    device: str | None = None
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=PRECISION_HELP)
    decode_budget_gb: float | None = Field(None, ge=0, description="pixels / ckpt encoders read a decoded uint8 cache "
                                           "when the source fits (default a quarter of RAM; 0: always stream)")
    metric: Literal["cosine", "l2"] = Field("cosine", description="cosine or l2.")
    index: str | None = Field(None, description="faiss index_factory string (e.g. 'IVF4096,Flat', 'OPQ32,IVF4096,PQ32'). "
                              "Default: Flat up to --exact-max vectors, IVF,Flat while float32 vectors fit "
                              "--index-budget-gb, IVF,PQ above.")
    exact_max: int = Field(200_000, ge=0, description="Exact search up to this many vectors.")
    nprobe: int | None = Field(None, ge=1, description="IVF lists visited per query (default: 16).")
    index_budget_gb: float | None = Field(None, gt=0, description="Memory the index may take (default: a quarter of "
                                          "RAM).")
    recall_queries: int = Field(1000, ge=0, description="Queries sampled to measure recall@k against exact search "
                                "(recorded in the manifest's index block).")
    key_column: str | None = Field(None, description="embeddings:DIR: the metadata column holding keys (default: "
                                   "image_path; same as #key=COLUMN).")
    label_column: str | None = Field(None, description="embeddings:DIR: a metadata column holding labels (same as "
                                     "#label=COLUMN).")
    shard_size: int = 5000
    audit: bool = Field(True, description="write audit/ (metrics, plots, report.html) into the version")
    mining: MiningConfig = Field(default_factory=MiningConfig)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, overrides: dict[str, Any]) -> CurateConfig:
        """``load_config`` with the mining keys (top level or under ``mining`` in YAML, bare as flags) nested."""
        return load_config(cls, yaml_path, overrides, nested={"mining": MiningConfig})


class QuickstartConfig(BaseModel):
    """The tour's knobs; YAML keys and ``quickstart`` flags share these names."""

    model_config = ConfigDict(extra="forbid")
    out: Path = Field(Path("semipairs-quickstart"), description="Where the store, runs and audit go.")
    source: str = Field("digits", description="Labelled image source (default: scikit-learn's bundled digits, offline).")
    method: Literal["moco", "simclr", "simsiam"] = Field("moco", description="Training method of both runs (train "
                                                        "--method). MoCo-v2 by default: at 150 steps on digits it "
                                                        "reaches 89% kNN in ~2.5 min; simclr shows the larger gain "
                                                        "(76 -> 80%) in ~4 min.")
    steps: int = Field(150, ge=1, description="Optimizer steps of each of the two training runs.")
    image_size: int = Field(16, ge=8, description="Training input size (digits are 8 px, upsampled).")
