"""``semipairs train``, ``eval`` and ``refine``; torch is imported only when they run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from semipairs.config import config_option, flags, load_config, option
from semipairs.errors import InvalidValueError
from training.configs import EvalConfig, RefineConfig, TrainConfig

TRAIN_EXAMPLE = ("Example: semipairs train --data cifar10:data --pairs store/cifar-pairs --epochs 200 "
                 "--backbone resnet18 --cifar-stem --out runs/with-pairs   "
                 "(multi-GPU: torchrun --nproc_per_node 8 -m semipairs.cli train ...)")
EVAL_EXAMPLE = ("Example: semipairs eval --checkpoint runs/moco/checkpoint.pt --train cifar10:data --test cifar10:data:test "
                "--linear")
REFINE_EXAMPLE = ("Example: semipairs refine --checkpoint runs/moco/checkpoint.pt --data cifar10:data "
                  "--eval-data cifar10:data:test --k 10 --conv sage --epochs 10 --out refined/moco")


def train_command(
    method: str | None = option(TrainConfig, "method"),
    data: str | None = option(TrainConfig, "data"),
    pairs: str | None = option(TrainConfig, "pairs"),
    pair_ratio: float | None = option(TrainConfig, "pair_ratio"),
    epochs: int | None = option(TrainConfig, "epochs"),
    batch_size: int | None = option(TrainConfig, "batch_size"),
    backbone: str | None = option(TrainConfig, "backbone"),
    cifar_stem: bool | None = option(TrainConfig, "cifar_stem", "--cifar-stem/--imagenet-stem"),
    image_size: int | None = option(TrainConfig, "image_size"),
    lr: float | None = option(TrainConfig, "lr"),
    head_norm: bool | None = option(TrainConfig, "head_norm", "--head-norm/--no-head-norm"),
    reco: bool | None = option(TrainConfig, "reco", "--reco/--no-reco"),
    eval_train: str | None = option(TrainConfig, "eval_train"),
    eval_test: str | None = option(TrainConfig, "eval_test"),
    knn_every: int | None = option(TrainConfig, "knn_every"),
    num_workers: int | None = option(TrainConfig, "num_workers"),
    device: str | None = option(TrainConfig, "device"),
    precision: str | None = option(TrainConfig, "precision"),
    decode_budget_gb: float | None = option(TrainConfig, "decode_budget_gb"),
    pair_mode: str | None = option(TrainConfig, "pair_mode"),
    swap_prob: float | None = option(TrainConfig, "swap_prob"),
    pair_weight: float | None = option(TrainConfig, "pair_weight"),
    pair_warmup: float | None = option(TrainConfig, "pair_warmup"),
    max_steps: int | None = option(TrainConfig, "max_steps"),
    compile: bool | None = option(TrainConfig, "compile", "--compile/--no-compile"),
    seed: int | None = option(TrainConfig, "seed"),
    out: Path | None = option(TrainConfig, "out"),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
) -> None:
    """Train MoCo-v2, SimSiam or SimCLR, optionally with semantic pairs and ReCo; resumes from RUN/checkpoint.pt."""
    given = flags(locals())
    from semipairs.console import note
    from semipairs.console import out as console
    from training.trainer import train

    cfg = load_config(TrainConfig, config, given)
    metrics = train(cfg, progress=not as_json, log=note)
    last = metrics["epochs"][-1] if metrics["epochs"] else {}
    summary = {"out": str(cfg.out), "epochs": len(metrics["epochs"]), "loss": last.get("loss"), "knn_top1": last.get("knn_top1")}
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    knn = "" if summary["knn_top1"] is None else f", kNN top-1 {summary['knn_top1']:.2f}%"
    loss = "-" if summary["loss"] is None else f"{summary['loss']:.4f}"
    console.print(f"trained {summary['epochs']} epoch(s): loss {loss}{knn}; run in {cfg.out}", soft_wrap=True, highlight=False)


def eval_command(
    checkpoint: Path | None = option(EvalConfig, "checkpoint"),
    train: str | None = option(EvalConfig, "train"),
    test: str | None = option(EvalConfig, "test"),
    linear: bool | None = option(EvalConfig, "linear", "--linear/--no-linear"),
    k: int | None = option(EvalConfig, "k"),
    num_workers: int | None = option(EvalConfig, "num_workers"),
    precision: str | None = option(EvalConfig, "precision"),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """kNN (k=200, T=0.07) and optional linear-probe top-1 of a checkpoint's backbone."""
    cfg = load_config(EvalConfig, config, flags(locals()))
    import torch

    from semipairs.checkpoint import load_backbone
    from semipairs.console import note
    from semipairs.console import out as console
    from semipairs.precision import precision_note, select_for_inference
    from semipairs.sources import open_source
    from training.evaluate import evaluate_backbone

    model, spec, _ = load_backbone(cfg.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = select_for_inference(cfg.precision, device, model, spec.image_size,
                                  key=f"eval:{spec.arch}:cifar_stem={spec.cifar_stem}")
    if text := precision_note(chosen):
        note(text)
    res = evaluate_backbone(model.to(device), open_source(cfg.train), open_source(cfg.test), spec.image_size,
                            linear=cfg.linear, k=cfg.k, num_workers=cfg.num_workers, device=device, precision=chosen,
                            progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    else:
        console.print(f"kNN top-1 {res.knn_top1:.2f}%" + (f", linear top-1 {res.linear_top1:.2f}%" if cfg.linear else ""))


def refine_command(
    checkpoint: Path | None = option(RefineConfig, "checkpoint"),
    data: str | None = option(RefineConfig, "data"),
    eval_data: str | None = option(RefineConfig, "eval_data"),
    k: int | None = option(RefineConfig, "k"),
    heldout_k: int | None = option(RefineConfig, "heldout_k"),
    fanouts: str | None = option(RefineConfig, "fanouts", help="Sampled edges per node at each hop, comma-separated, "
                                 "one per layer [default: 15,10]."),
    layers: int | None = option(RefineConfig, "layers"),
    conv: str | None = option(RefineConfig, "conv"),
    epochs: int | None = option(RefineConfig, "epochs"),
    batch_size: int | None = option(RefineConfig, "batch_size"),
    hidden: int | None = option(RefineConfig, "hidden"),
    num_workers: int | None = option(RefineConfig, "num_workers"),
    precision: str | None = option(RefineConfig, "precision"),
    decline_worse: bool | None = option(RefineConfig, "decline_worse", "--decline-worse/--keep-worse"),
    seed: int | None = option(RefineConfig, "seed"),
    out: Path | None = option(RefineConfig, "out"),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Refine a checkpoint's embeddings with a GNN over kNN graphs (GraphNNCLR); compare kNN top-1 raw vs refined."""
    given = flags(locals())
    try:
        given["fanouts"] = None if fanouts is None else [int(f) for f in fanouts.split(",")]
    except ValueError:
        raise InvalidValueError(f"--fanouts {fanouts!r}: give integers separated by commas, such as 15,10") from None
    cfg = load_config(RefineConfig, config, given)
    from rich.table import Table

    from semipairs.console import note
    from semipairs.console import out as console
    from training.refine import refine

    report = refine(cfg, progress=not as_json, log=note)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    knn = report.get("knn_top1")
    if knn:
        t = Table(title=f"kNN top-1 (k={report['config']['knn_k']}) on {cfg.eval_data}")
        for col in ("embeddings", "kNN top-1"):
            t.add_column(col)
        for name, v in knn.items():
            t.add_row(name, "-" if v is None else f"{v:.2f}%")
        console.print(t)
    refined = cfg.out / "refined.npy"
    console.print(f"refined embeddings: {refined} (use: semipairs curate --embeddings {refined} --source {cfg.data} ...)"
                  f"  [{report['seconds']} s]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("train", epilog=TRAIN_EXAMPLE)(train_command)
    app.command("eval", epilog=EVAL_EXAMPLE)(eval_command)
    app.command("refine", epilog=REFINE_EXAMPLE)(refine_command)
