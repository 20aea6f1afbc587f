"""The configs of ``train``, ``eval`` and ``refine``: one pydantic model each, torch-free, so the CLI builds
its options (help text, shown default) from them at start-up and YAML keys, flags and Python share one
set of names, defaults and checks (``semipairs.config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from semipairs.config import PRECISION_HELP
from semipairs.errors import InvalidValueError

Precision = Literal["auto", "fp32", "bf16"]
IN_BATCH_METHODS = ("simclr", "msf", "wcl")  # methods whose pairs are positives in the batch by default
SOURCES = "imagefolder:DIR, webdataset:PATTERN, cifar10:ROOT, digits, hf:OWNER/NAME[:SPLIT]"


class TrainConfig(BaseModel):
    """One training run; YAML keys and ``train`` flags share these names (flags win)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["moco", "simsiam", "simclr", "msf", "wcl"] = Field(
        "simclr", description="simclr (in-batch NT-Xent; with pairs, partners in the batch are positives: the measured "
        "best at CPU budgets, docs/benchmarks.md), moco (MoCo-v2), simsiam, msf (mean shift to the partners' momentum "
        "keys, no negatives) or wcl (SimCLR + a second head whose labels are the batch's pair-graph components).")
    data: str = Field(description=f"Training images: {SOURCES}.")
    out: Path = Field(description="Run directory: checkpoint.pt, metrics.json, config.yaml.")
    pairs: str | None = Field(None, description="Pair dataset (path or hf://OWNER/NAME[@REV]) whose semantic pairs "
                              "join each epoch (SePP-ID).")
    pair_ratio: float = Field(1.0, ge=0, le=1, description="Share of the pairs used per epoch.")
    epochs: int = Field(100, ge=1, description="Epochs.")
    stop_after: int | None = Field(None, ge=1, description="Stop after this many epochs of this call; resume later.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps in all (a fixed budget); the schedule "
                                  "spans them.")
    batch_size: int = Field(256, ge=2, description="Batch size per process.")
    backbone: str = Field("resnet18", description="resnet18, resnet34, resnet50 or timm:NAME.")
    cifar_stem: bool = Field(False, description="3x3 stem without max-pool for 32 px (--imagenet-stem: the 7x7 one).")
    image_size: int = Field(32, ge=8, description="Input size.")
    lr: float = Field(0.06, gt=0, description="Base LR for batch 256 (scaled linearly).")
    weight_decay: float = 5e-4
    temperature: float = 0.2
    queue_size: int = 4096
    moco_momentum: float = 0.99
    proj_dim: int = 128
    head_norm: bool = Field(False, description="BN after the projection head's hidden layer, as SimCLR's own head has "
                            "it (MoCo-v2's has none; msf always has it).")
    reco: bool = Field(False, description="Add ReCo global + local terms (MoCo).")
    reco_global_weight: float = 1.0
    reco_local_weight: float = 1.0
    knn_every: int = Field(0, ge=0, description="kNN top-1 every N epochs (0: at the end).")
    knn_k: int = 200
    eval_train: str | None = Field(None, description="Labelled source for the kNN monitor's memory bank.")
    eval_test: str | None = Field(None, description="Labelled source the kNN monitor scores.")
    num_workers: int = Field(2, ge=0, description="DataLoader workers.")
    device: str | None = Field(None, description="cpu or cuda (default: cuda when present).")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    decode_budget_gb: float | None = Field(None, ge=0, description="Decode the images once into a memory-mapped array "
                                           "when they fit this many GB (default: a quarter of RAM; 0: always stream).")
    pair_mode: Literal["extra", "swap", "multi", "inbatch"] | None = Field(
        None, description="How pairs join: extra (SePP-ID extra samples; the default for moco and simsiam), swap (a "
        "partner's view replaces an image's key view with --swap-prob), multi (MoCo: queued partner keys are "
        "positives) or inbatch (half of each batch are partners of the other half, and positives in the loss; the "
        "default of simclr, msf and wcl; moco too). swap, multi and inbatch need the decoded path.")
    swap_prob: float = Field(0.5, ge=0, le=1, description="swap mode: chance an image with partners takes one as its key.")
    pair_weight: float = Field(1.0, ge=0, description="Loss weight of pair samples relative to same-image samples.")
    pair_warmup: float = Field(0.0, ge=0, lt=1, description="Share of the step budget before pairs join (decoded path).")
    compile: bool = Field(False, description="torch.compile the model.")
    seed: int = Field(0, description="Seed.")
    resume: bool = True

    @model_validator(mode="after")
    def _default_pair_mode(self) -> TrainConfig:
        if self.pair_mode is None:
            self.pair_mode = "inbatch" if self.method in IN_BATCH_METHODS else "extra"
        return self


class EvalConfig(BaseModel):
    """One evaluation; YAML keys and ``eval`` flags share these names."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: Path = Field(description="A training checkpoint (its query backbone is evaluated).")
    train: str = Field(description="Labelled source for the kNN bank / probe training.")
    test: str = Field(description="Labelled source to score.")
    linear: bool = Field(False, description="Also train a linear probe.")
    k: int = Field(200, ge=1, description="kNN neighbours.")
    num_workers: int = Field(2, ge=0, description="DataLoader workers / decode threads.")
    precision: Precision = Field("auto", description=PRECISION_HELP)


class RefineConfig(BaseModel):
    """One GNN refinement; YAML keys and ``refine`` flags share these names."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: Path = Field(description="A training checkpoint (student = query encoder, teacher = momentum encoder).")
    data: str = Field(description="Source whose images become the training nodes.")
    out: Path = Field(description="Output dir: refined.npy (+ .keys.txt), refined-eval.npy, report.json.")
    eval_data: str | None = Field(None, description="Held-out source: nodes linked to their nearest training nodes.")
    k: int = Field(10, ge=1, description="Neighbours per node in each kNN graph (symmetrised).")
    heldout_k: int | None = Field(None, ge=1, description="Edges from each held-out node to training nodes "
                                  "(default: k).")
    layers: int = Field(2, ge=1, description="GNN layers (hops).")
    conv: Literal["gcn", "sage", "gat"] = Field("sage", description="sage, gcn or gat (sage measured better than gcn "
                                                "here).")
    hidden: int = Field(256, ge=8, description="GNN width.")
    skip: bool = Field(True, description="the node's own projected features join the jumping-knowledge max")
    epochs: int = Field(10, ge=1, description="Epochs over the training nodes.")
    batch_size: int = Field(512, ge=2, description="Seed nodes per mini-batch.")
    fanouts: list[int] | None = Field(None, description="Sampled edges per node at each hop, one per layer "
                                      "(default: 15, then 10 for every further hop).")
    feature_mask: float = Field(0.2, ge=0, lt=1, description="share of feature columns zeroed per view and step (BGRL)")
    edge_drop: float = Field(0.2, ge=0, lt=1, description="share of sampled edges dropped per view and step (BGRL)")
    center: bool = Field(True, description="subtract the training nodes' mean before normalising refined halves")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-5
    ema: float = Field(0.99, ge=0, lt=1, description="target EMA momentum at the start (cosine to 1)")
    knn_k: int = 200
    decline_worse: bool = Field(True, description="With labelled --eval-data: keep the raw embeddings when the "
                                "refined ones score lower (the report says so).")
    num_workers: int = Field(2, ge=0, description="DataLoader decode workers for embedding.")
    device: str | None = None
    precision: Precision = Field("auto", description=PRECISION_HELP)
    seed: int = Field(0, description="Seed.")

    @model_validator(mode="after")
    def _one_fanout_per_layer(self) -> RefineConfig:
        if self.fanouts is not None and (len(self.fanouts) != self.layers or min(self.fanouts) < 1):
            raise InvalidValueError(f"--fanouts (config key 'fanouts'): {self.fanouts} must give one value >= 1 per "
                                    f"layer ({self.layers} layers, --layers)")
        return self

    def resolved_fanouts(self) -> list[int]:
        return self.fanouts if self.fanouts is not None else [15] + [10] * (self.layers - 1)
