"""``semipairs train``, ``eval`` and ``refine``; torch is imported only when they run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from semipairs.errors import InvalidValueError

TRAIN_EXAMPLE = ("Example: semipairs train --method moco --data cifar10:data --pairs store/cifar-pairs --epochs 200 "
                 "--backbone resnet18 --cifar-stem --out runs/moco-pairs   "
                 "(multi-GPU: torchrun --nproc_per_node 8 -m semipairs.cli train ...)")
EVAL_EXAMPLE = ("Example: semipairs eval --checkpoint runs/moco/checkpoint.pt --train cifar10:data --test cifar10:data:test "
                "--linear")
PRECISION_HELP = ("auto (where the CPU has avx512_bf16/AMX or on CUDA: the faster of fp32 and bf16 autocast, with or "
                  "without channels_last, each checked against fp32 on one step; fp32 elsewhere), fp32, or bf16 (the "
                  "same check; fp32 with a note when no bf16 option agrees).")
REFINE_EXAMPLE = ("Example: semipairs refine --checkpoint runs/moco/checkpoint.pt --data cifar10:data "
                  "--eval-data cifar10:data:test --k 10 --conv sage --epochs 10 --out refined/moco")


def train_command(
    method: str | None = typer.Option(None, help="moco, simsiam or simclr (in-batch NT-Xent; with --pair-mode inbatch, "
                                      "partners in the batch are positives)."),
    data: str | None = typer.Option(None, help="Training images: imagefolder:DIR, webdataset:PATTERN, "
                                     "cifar10:ROOT, digits, hf:OWNER/NAME[:SPLIT]."),
    pairs: str | None = typer.Option(None, help="Pair dataset (path or hf://OWNER/NAME[@REV]) whose semantic pairs "
                                      "join each epoch (SePP-ID)."),
    pair_ratio: float | None = typer.Option(None, help="Share of the pairs used per epoch (default 1.0)."),
    epochs: int | None = typer.Option(None, help="Epochs (default 100)."),
    batch_size: int | None = typer.Option(None, help="Batch size per process (default 256)."),
    backbone: str | None = typer.Option(None, help="resnet18, resnet50 or timm:NAME."),
    cifar_stem: bool | None = typer.Option(None, "--cifar-stem/--imagenet-stem", help="3x3 stem without max-pool for 32 px."),
    image_size: int | None = typer.Option(None, help="Input size (default 32)."),
    lr: float | None = typer.Option(None, help="Base LR for batch 256 (scaled linearly)."),
    reco: bool | None = typer.Option(None, "--reco/--no-reco", help="Add ReCo global + local terms (MoCo)."),
    eval_train: str | None = typer.Option(None, help="Labelled source for the kNN monitor's memory bank."),
    eval_test: str | None = typer.Option(None, help="Labelled source the kNN monitor scores."),
    knn_every: int | None = typer.Option(None, help="kNN top-1 every N epochs (0: at the end)."),
    num_workers: int | None = typer.Option(None, help="DataLoader workers (default 2)."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
    decode_budget_gb: float | None = typer.Option(None, help="Decode the images once into a memory-mapped array when they "
                                                  "fit this many GB (default: a quarter of RAM; 0: always stream)."),
    pair_mode: str | None = typer.Option(None, help="How pairs join: extra (SePP-ID extra samples; the default, but "
                                         "inbatch for simclr), swap (a partner's view replaces an image's key view "
                                         "with --swap-prob), multi (MoCo: queued partner keys are positives) or inbatch "
                                         "(half of each batch are partners of the other half, and positives in the "
                                         "loss; simclr or moco)."),
    swap_prob: float | None = typer.Option(None, help="swap mode: chance an image with partners takes one (default 0.5)."),
    pair_weight: float | None = typer.Option(None, help="Loss weight of pair samples (default 1.0)."),
    pair_warmup: float | None = typer.Option(None, help="Share of the step budget before pairs join (default 0)."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps in all; the schedule spans them."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    seed: int | None = typer.Option(None, help="Seed."),
    out: Path | None = typer.Option(None, help="Run directory: checkpoint.pt, metrics.json, config.yaml."),
    config: Path | None = typer.Option(None, help="YAML config; flags override its keys."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
) -> None:
    """Train MoCo-v2, SimSiam or SimCLR, optionally with semantic pairs and ReCo; resumes from RUN/checkpoint.pt."""
    from semipairs.config import load_config
    from semipairs.console import note
    from semipairs.console import out as console
    from training.trainer import TrainConfig, train

    flags = dict(method=method, data=data, pairs=pairs, pair_ratio=pair_ratio, epochs=epochs, batch_size=batch_size,
                 backbone=backbone, cifar_stem=cifar_stem, image_size=image_size, lr=lr, reco=reco, eval_train=eval_train,
                 eval_test=eval_test, knn_every=knn_every, num_workers=num_workers, device=device, precision=precision,
                 decode_budget_gb=decode_budget_gb, pair_mode=pair_mode, swap_prob=swap_prob, pair_weight=pair_weight,
                 pair_warmup=pair_warmup, max_steps=max_steps, compile=compile, seed=seed, out=out)
    cfg = load_config(TrainConfig, config, flags)
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
    checkpoint: Path = typer.Option(..., help="A training checkpoint (its query backbone is evaluated)."),
    train_src: str = typer.Option(..., "--train", help="Labelled source for the kNN bank / probe training."),
    test_src: str = typer.Option(..., "--test", help="Labelled source to score."),
    linear: bool = typer.Option(False, "--linear", help="Also train a linear probe."),
    k: int = typer.Option(200, help="kNN neighbours."),
    num_workers: int = typer.Option(2, help="DataLoader workers / decode threads."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """kNN (k=200, T=0.07) and optional linear-probe top-1 of a checkpoint's backbone."""
    import torch

    from semipairs.console import note
    from semipairs.console import out as console
    from semipairs.precision import precision_note, select_for_inference
    from semipairs.sources import open_source
    from training.checkpoint import load_backbone
    from training.evaluate import evaluate_backbone

    model, spec, _ = load_backbone(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = select_for_inference(precision, device, model, spec.image_size, key=f"eval:{spec.arch}:cifar_stem={spec.cifar_stem}")
    if text := precision_note(chosen):
        note(text)
    res = evaluate_backbone(model.to(device), open_source(train_src), open_source(test_src), spec.image_size,
                            linear=linear, k=k, num_workers=num_workers, device=device, precision=chosen,
                            progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    else:
        console.print(f"kNN top-1 {res.knn_top1:.2f}%" + (f", linear top-1 {res.linear_top1:.2f}%" if linear else ""))


def refine_command(
    checkpoint: Path = typer.Option(..., help="A training checkpoint (student = query encoder, teacher = momentum encoder)."),
    data: str = typer.Option(..., help="Source whose images become the training nodes."),
    eval_data: str | None = typer.Option(None, help="Held-out source: nodes linked to their nearest training nodes."),
    k: int = typer.Option(10, min=1, help="Neighbours per node in each kNN graph (symmetrised)."),
    heldout_k: int | None = typer.Option(None, min=1, help="Edges from each held-out node to training nodes [default: k]."),
    fanouts: str | None = typer.Option(None, help="Sampled edges per node at each hop, comma-separated, one per layer "
                                       "[default: 15,10]."),
    layers: int = typer.Option(2, min=1, help="GNN layers (hops)."),
    conv: str = typer.Option("sage", help="sage (default), gcn or gat."),
    epochs: int = typer.Option(10, min=1, help="Epochs over the training nodes."),
    batch_size: int = typer.Option(512, min=2, help="Seed nodes per mini-batch."),
    hidden: int = typer.Option(256, min=8, help="GNN width."),
    num_workers: int = typer.Option(2, min=0, help="DataLoader decode workers for embedding."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    decline_worse: bool = typer.Option(True, "--decline-worse/--keep-worse", help="With labelled --eval-data: keep the "
                                       "raw embeddings when the refined ones score lower."),
    seed: int = typer.Option(0, help="Seed."),
    out: Path = typer.Option(..., help="Output dir: refined.npy (+ .keys.txt), refined-eval.npy, report.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Refine a checkpoint's embeddings with a GNN over kNN graphs (GraphNNCLR); compare kNN top-1 raw vs refined."""
    from rich.table import Table

    from semipairs.console import note
    from semipairs.console import out as console
    from training.refine import RefineConfig, refine

    try:
        fan = None if fanouts is None else [int(f) for f in fanouts.split(",")]
    except ValueError:
        raise InvalidValueError(f"--fanouts {fanouts!r}: give integers separated by commas, such as 15,10") from None
    cfg = RefineConfig(checkpoint=checkpoint, data=data, eval_data=eval_data, k=k, heldout_k=heldout_k, fanouts=fan,
                       layers=layers, conv=conv, epochs=epochs, batch_size=batch_size, hidden=hidden,
                       num_workers=num_workers, precision=precision, decline_worse=decline_worse, seed=seed, out=out)
    report = refine(cfg, progress=not as_json, log=note)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    knn = report.get("knn_top1")
    if knn:
        t = Table(title=f"kNN top-1 (k={report['config']['knn_k']}) on {eval_data}")
        for col in ("embeddings", "kNN top-1"):
            t.add_column(col)
        for name, v in knn.items():
            t.add_row(name, "-" if v is None else f"{v:.2f}%")
        console.print(t)
    console.print(f"refined embeddings: {out / 'refined.npy'} (use: semipairs curate --embeddings {out / 'refined.npy'} "
                  f"--source {data} ...)  [{report['seconds']} s]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("train", epilog=TRAIN_EXAMPLE)(train_command)
    app.command("eval", epilog=EVAL_EXAMPLE)(eval_command)
    app.command("refine", epilog=REFINE_EXAMPLE)(refine_command)
