"""The training loop for MoCo-v2, SimSiam and SimCLR, with semantic pairs (SePP-ID) and ReCo as options.

Where the source fits the decode budget, images are decoded once (``semipairs.decoded``) and every batch
is gathered from that array and augmented as a batch (``batch_augment``): no DataLoader workers, the
cores go to the model. Larger sources stream through DataLoader workers and the per-image PIL recipe.

Writes ``RUN/checkpoint.pt`` (every epoch, atomically), ``RUN/metrics.json`` (per-epoch loss and kNN
top-1) and ``RUN/config.yaml``. A run resumes from its checkpoint and continues the same run: model,
momentum encoder, queue, optimizer, schedule, epoch and RNG states. Under torchrun it trains with DDP
(SyncBatchNorm on GPUs, MoCo keys all-gathered into every rank's queue). Precision is chosen by a check of one
step (``semipairs.precision``); a non-finite loss or gradient stops the run before the optimizer applies it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from semipairs.atomic import remove_stale_temps, write_text
from semipairs.backbones import BackboneSpec, backbone_state, build_backbone
from semipairs.budget import budget_from_gb
from semipairs.checkpoint import backbone_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from semipairs.dataset import PairDataset
from semipairs.decoded import DecodedImages, decode_source
from semipairs.dist import broadcast_object, distributed
from semipairs.errors import DivergedError, SemipairsError
from semipairs.lock import exclusive
from semipairs.precision import Precision, all_finite, precision_note, select_precision, training_probe, training_timer
from semipairs.sources import open_source
from semipairs.sources.base import ImageSource
from training.augment import RECIPES
from training.batch_augment import BatchRecipe
from training.configs import IN_BATCH_METHODS, TrainConfig
from training.decoded_batches import PAIR, PairRows, plan_epoch, resolve_pairs, samples_per_epoch
from training.evaluate import evaluate_backbone
from training.moco import MoCo
from training.msf import MSF
from training.simclr import SimCLR
from training.simsiam import SimSiam
from training.streamed import SePPViews, check_pair_keys
from training.wcl import WCL


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# the settings that shape the model: a checkpoint resumes only under the same ones, a precision verdict is kept per them
MODEL_SHAPE = ("method", "backbone", "cifar_stem", "image_size", "proj_dim", "head_norm", "queue_size", "reco")


def build_model(cfg: TrainConfig) -> tuple[nn.Module, BackboneSpec]:
    spec = BackboneSpec(cfg.backbone, cifar_stem=cfg.cifar_stem, image_size=cfg.image_size)
    backbone, dim = build_backbone(spec)
    if cfg.method == "moco":
        weights = (cfg.reco_global_weight, cfg.reco_local_weight) if cfg.reco else (0.0, 0.0)
        model: nn.Module = MoCo(backbone, dim, cfg.proj_dim, queue_size=cfg.queue_size, momentum=cfg.moco_momentum,
                                temperature=cfg.temperature, reco_global_weight=weights[0], reco_local_weight=weights[1],
                                head_norm=cfg.head_norm)
    elif cfg.method == "simclr":
        model = SimCLR(backbone, dim, cfg.proj_dim, temperature=cfg.temperature, head_norm=cfg.head_norm)
    elif cfg.method == "wcl":
        model = WCL(backbone, dim, cfg.proj_dim, temperature=cfg.temperature, head_norm=cfg.head_norm)
    elif cfg.method == "msf":
        model = MSF(backbone, dim, cfg.proj_dim, queue_size=cfg.queue_size, momentum=cfg.moco_momentum)
    else:
        model = SimSiam(backbone, dim)
    return model, spec



def _steps_per_epoch(n: int, batch: int, world: int, spare: int = 0) -> int:
    """Batches every rank can fill in an epoch; ``spare`` samples per rank are held back for streamed readers
    that run short, so no rank is left waiting at a collective."""
    steps = (n // world - spare) // batch
    if steps < 1:
        raise SemipairsError(f"{n} samples give no full batch of {batch} on {world} rank(s); lower --batch-size")
    return steps


class DecodedData:
    """Batches gathered from the decoded array and augmented as whole batches (the fast path)."""

    def __init__(self, decoded: DecodedImages, pairs: PairRows | None, cfg: TrainConfig, rank: int, world: int) -> None:
        self.decoded, self.pairs, self.cfg, self.rank, self.world = decoded, pairs, cfg, rank, world
        self.recipe = BatchRecipe(cfg.image_size)
        n = samples_per_epoch(decoded.ok, pairs, cfg.pair_mode, cfg.pair_ratio)
        self.steps = _steps_per_epoch(n, cfg.batch_size, world)

    @property
    def skipped(self) -> int:
        """Unreadable images: found once while decoding, left out of every epoch."""
        return len(self.decoded.skipped)

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.decoded.images[rows])

    def batches(self, epoch: int, warmup_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor | None]]:
        """(view 1, view 2, kind, rows): ``rows`` (the first view's source rows) once pairs have joined."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + self.rank)
        plan = plan_epoch(self.decoded.ok, self.pairs, seed=cfg.seed, epoch=epoch, rank=self.rank, world=self.world,
                          batch_size=cfg.batch_size, steps=self.steps, mode=cfg.pair_mode, pair_ratio=cfg.pair_ratio,
                          swap_prob=cfg.swap_prob)
        for s, b in enumerate(plan):
            rows_b, kind, rows = b.rows_b, b.kind, torch.from_numpy(b.rows_a)
            if epoch * self.steps + s < warmup_steps:  # pairs have not joined yet: their anchors see themselves
                rows_b, kind, rows = np.where(kind == PAIR, b.rows_a, rows_b), np.zeros_like(kind), None
            yield (self.recipe(self._gather(b.rows_a), gen), self.recipe(self._gather(rows_b), gen), torch.from_numpy(kind),
                   rows)


class StreamedData:
    """Images decoded and augmented one by one in DataLoader workers (sources over the decode budget)."""

    def __init__(self, source: ImageSource, pairs: PairDataset | None, cfg: TrainConfig, world: int, on_gpu: bool) -> None:
        self.dataset = SePPViews(source, RECIPES[cfg.method](cfg.image_size), pairs, cfg.pair_ratio, seed=cfg.seed)
        self.cfg, self.on_gpu = cfg, on_gpu
        self.steps = _steps_per_epoch(len(self.dataset), cfg.batch_size, world, max(1, cfg.num_workers))
        self.skipped = 0  # unreadable images the workers passed over this epoch (this rank)

    def batches(self, epoch: int, warmup_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]]:
        self.dataset.set_epoch(epoch)
        self.skipped = 0
        loader = DataLoader(self.dataset, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers, drop_last=True,
                            pin_memory=self.on_gpu)
        for v1, v2, info in loader:
            self.skipped += int(info["skipped"].sum())
            yield v1, v2, info["kind"], None


def build_data(cfg: TrainConfig, source: ImageSource, pairs: PairDataset | None, rank: int, world: int,
               on_gpu: bool, progress: bool = False) -> DecodedData | StreamedData:
    """The decoded fast path when the source fits the budget (rank 0 decodes, the others then map it)."""
    if pairs is not None:
        check_pair_keys(pairs, source)
    decoded = None
    for turn in range(2 if world > 1 else 1):
        if (rank == 0) == (turn == 0):
            decoded = decode_source(source, cfg.image_size, budget_bytes=budget_from_gb(cfg.decode_budget_gb),
                                    workers=max(1, cfg.num_workers), progress=progress and rank == 0)
        if world > 1:
            torch.distributed.barrier()
    if decoded is not None:
        rows = None
        if pairs is not None:
            known = source.index_of()
            if all(k in known for k in pairs.table["anchor_key"]) and all(k in known for k in pairs.table["positive_key"]):
                rows = resolve_pairs(pairs.table, known, decoded.ok)
            elif cfg.pair_mode == "extra" and not cfg.pair_warmup:
                return StreamedData(source, pairs, cfg, world, on_gpu)  # embedded pairs of another source: their shards
        if pairs is None or rows is not None:
            return DecodedData(decoded, rows, cfg, rank, world)
    if cfg.pair_mode != "extra" or cfg.pair_warmup:
        raise SemipairsError(f"--pair-mode {cfg.pair_mode} / --pair-warmup need the decoded path: {source.spec} does not "
                             "fit the decode budget (raise --decode-budget-gb) or its pairs name keys of another source")
    return StreamedData(source, pairs, cfg, world, on_gpu)


@dataclass
class Run:
    """Everything one training run holds between steps."""

    cfg: TrainConfig
    rank: int
    world: int
    device: str
    precision: Precision
    model: nn.Module
    train_model: nn.Module
    spec: BackboneSpec
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: DecodedData | StreamedData
    total: int
    metrics: dict[str, Any] = field(default_factory=dict)
    start: int = 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def setup(cfg: TrainConfig, rank: int, world: int, progress: bool = False) -> Run:
    """Device, precision, data, model, optimizer and cosine schedule over the step budget."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    _seed_all(cfg.seed + rank)
    source = open_source(cfg.data)
    pairs = None
    if cfg.pairs:
        import semipairs

        pairs = semipairs.load(cfg.pairs)
    data = build_data(cfg, source, pairs, rank, world, device.startswith("cuda"), progress)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)  # only once the data proved readable
    model, spec = build_model(cfg)
    if cfg.pair_mode in ("multi", "inbatch") and pairs is not None:
        if cfg.method not in ({"moco"} if cfg.pair_mode == "multi" else {"moco", *IN_BATCH_METHODS}):
            *first, last = IN_BATCH_METHODS
            raise SemipairsError(f"--pair-mode {cfg.pair_mode} needs --method moco" + (
                " (positives are found in its queue)" if cfg.pair_mode == "multi" else
                f", {', '.join(first)} or {last} (SimSiam has no partners in its loss)"))
        model.set_partners(torch.from_numpy(data.pairs.anchor), torch.from_numpy(data.pairs.positive), len(data.decoded),
                           mode=cfg.pair_mode)
    precision = broadcast_object(choose_training_precision(cfg, model, device))
    model = precision.prepare_model(model.to(device))
    lr = cfg.lr * cfg.batch_size * world / 256
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    total = cfg.epochs * data.steps if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * data.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    train_model: nn.Module = model
    if world > 1:
        on_gpu = device.startswith("cuda")  # SyncBatchNorm runs on GPUs only; CPU (gloo) ranks keep per-rank BN statistics
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(model) if on_gpu else model
        train_model = nn.parallel.DistributedDataParallel(
            synced, broadcast_buffers=False, device_ids=[torch.device(device).index] if on_gpu else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    lineage = {"pairs_dataset": pairs.manifest.ref().model_dump()} if pairs is not None else {}
    return Run(cfg, rank, world, device, precision, model, train_model, spec, optimizer, scheduler, data, total,
               {"method": cfg.method, "precision": precision.label, "precision_reason": precision.reason,
                "data_path": type(data).__name__, **lineage, "epochs": []})


def choose_training_precision(cfg: TrainConfig, model: nn.Module, device: str) -> Precision:
    """``select_precision`` on one step of this very model: agreement on 8 images of each view at the run's
    size, speed (for ``auto``) on a step of the run's batch."""
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, cfg.image_size, cfg.image_size, generator=gen) for _ in range(2)]

    def batch() -> list[torch.Tensor]:  # only when auto times the options
        g = torch.Generator().manual_seed(1)
        return [torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g) for _ in range(2)]

    def step(m: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
        return m(xs[0], xs[1])[0]
    names = ["loss"] + [n for n, q in model.named_parameters() if q.requires_grad]
    key = "train:" + ":".join(f"{k}={getattr(cfg, k)}" for k in (*MODEL_SHAPE, "batch_size"))
    return select_precision(cfg.precision, device, training_probe(model, views, device, step), key=key, model=model,
                            names=names, timer=training_timer(model, batch, device, step))


def resume(run: Run) -> None:
    """Continue from ``OUT/checkpoint.pt``: model, momentum encoder, queue, optimizer, schedule, epoch, RNG.
    A checkpoint of another model (a flag that shapes it changed) is refused by name, not by a state-dict trace."""
    path = run.out / "checkpoint.pt"
    if not (run.cfg.resume and path.exists()):
        return
    state = load_checkpoint(path)
    old, new = state.get("config") or {}, run.cfg.model_dump(mode="json")
    shaping = [k for k in MODEL_SHAPE if k != "queue_size" or "queue" in state["model"]]  # no queue: its size shapes nothing
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in shaping if k in old and old[k] != new[k]]
    if changed:
        raise SemipairsError(f"{path}: this run was trained with another model ({'; '.join(changed)}); "
                             "give another --out, or the run's own settings to resume it")
    if "queue" in state["model"]:  # runs saved before queued rows were kept: their keys have no known row
        state["model"].setdefault("queue_rows", torch.full_like(run.model.queue_rows, -1))
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.start = int(state["epoch"])
    set_rng_state(state["rng"])
    if "metrics_epochs" in state:  # the rows of the epochs this checkpoint holds, written with it
        run.metrics["epochs"] = json.loads(state["metrics_epochs"])[: run.start]
    elif (run.out / "metrics.json").exists():  # checkpoints of earlier releases: a kill between the two writes
        previous = json.loads((run.out / "metrics.json").read_text())  # could leave metrics.json one epoch behind
        run.metrics["epochs"] = previous["epochs"][: run.start]


def train_epoch(run: Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch (or what is left of the step budget in it); its metrics row."""
    cfg, steps = run.cfg, run.data.steps
    run.model.train()
    losses, parts_sum, pairs_seen, t0 = [], {}, 0, time.perf_counter()
    warmup = int(cfg.pair_warmup * run.total)
    first = None
    # the bar ends its line even when a step raises: the error then starts a line of its own
    with tqdm(total=min(steps, run.total - epoch * steps), desc=f"epoch {epoch + 1}/{_final_epoch(run)}",
              disable=not progress or run.rank != 0, unit="step") as bar:
        for step, (v1, v2, kind, rows) in enumerate(run.data.batches(epoch, warmup)):
            if step >= steps or epoch * steps + step >= run.total:
                break
            if step == 1:
                first = time.perf_counter() - t0  # loader start-up and the first step: left out of the steady rate
            weights = None if cfg.pair_weight == 1.0 else torch.where(kind == PAIR, cfg.pair_weight, 1.0).to(run.device)
            v1 = run.precision.prepare_input(v1.to(run.device, non_blocking=True))
            v2 = run.precision.prepare_input(v2.to(run.device, non_blocking=True))
            with run.precision.autocast():
                loss, parts, keys = run.train_model(v1, v2, weights, rows)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(float(loss.detach()))
            require_finite(run, epoch * steps + step, losses[-1])
            run.optimizer.step()
            run.scheduler.step()
            if keys is not None:
                run.model.enqueue(keys.float(), rows)
            pairs_seen += int((kind == PAIR).sum())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    seconds = time.perf_counter() - t0
    steady = (len(losses) - 1) * cfg.batch_size / (seconds - first) if first is not None and seconds > first else None
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "step_losses": losses,
            "parts": {k: v / len(losses) for k, v in parts_sum.items()}, "pair_samples": pairs_seen,
            "skipped_images": run.data.skipped,
            "seconds": round(seconds, 2), "images_per_s": None if steady is None else round(steady, 1),
            "lr": run.scheduler.get_last_lr()[0]}


def _diverged(run: Run, what: str) -> DivergedError:
    saved = run.out / "checkpoint.pt"
    kept = f"{saved} still holds the last good epoch" if saved.exists() else "no checkpoint was written"
    hint = "--precision fp32 or a lower --lr" if run.precision.bf16 else "a lower --lr"
    return DivergedError(f"training diverged: {what} under precision {run.precision.label} (lr {run.cfg.lr}); {kept}; "
                         f"try {hint}")


def require_finite(run: Run, step: int, loss: float) -> None:
    """Stop at the first non-finite loss or gradient, before the optimizer applies it (step counts from 1)."""
    if not math.isfinite(loss):
        raise _diverged(run, f"loss is {loss} at step {step + 1}")
    if not all_finite([p.grad for p in run.model.parameters()]):
        raise _diverged(run, f"a gradient is not finite at step {step + 1}")


def save(run: Run, epoch: int) -> None:
    """Checkpoint and metrics, each written atomically (rank 0 only); non-finite weights are never written."""
    cfg, model = run.cfg, run.model
    if not all_finite([t for t in model.state_dict().values() if t.is_floating_point()]):
        raise _diverged(run, f"the weights are not finite at the end of epoch {epoch + 1}")
    save_checkpoint(run.out / "checkpoint.pt", backbone_checkpoint(
        model.backbone, run.spec, method=cfg.method,
        teacher=backbone_state(model.backbone_k) if hasattr(model, "backbone_k") else None,  # moco, msf
        model=model.state_dict(), optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        epoch=epoch + 1, rng=rng_state(), config=cfg.model_dump(mode="json"),
        pairs_dataset=run.metrics.get("pairs_dataset"),  # the lineage a curate with this checkpoint records as parent
        metrics_epochs=json.dumps(run.metrics["epochs"])))
    write_text(run.out / "metrics.json", json.dumps(run.metrics, indent=1))


def _final_epoch(run: Run) -> int:
    """The run's last epoch (a step budget may end it before ``epochs``)."""
    return min(run.cfg.epochs, -(-run.total // run.data.steps))


def train(cfg: TrainConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.method`` (resuming from ``cfg.out/checkpoint.pt`` when present); the metrics written.
    Rank 0 holds ``cfg.out``'s lock for the run (a second job into it is refused). ``log`` receives notes for
    the user (the precision check's, when it refused a configuration)."""
    with distributed() as (rank, world):
        lock = exclusive(cfg.out, "training into this run directory") if rank == 0 else contextlib.nullcontext()
        with lock:
            if rank == 0:  # what a killed run left half-written (it never replaced the last good file)
                for name in ("checkpoint.pt", "metrics.json", "config.yaml"):
                    remove_stale_temps(Path(cfg.out) / name)
            return _run(cfg, rank, world, progress, log)


def _run(cfg: TrainConfig, rank: int, world: int, progress: bool, log: Callable[[str], None] | None) -> dict[str, Any]:
    run = setup(cfg, rank, world, progress)
    if log is not None and rank == 0 and (text := precision_note(run.precision)):
        log(text)
    if log is not None and rank == 0 and isinstance(run.data, DecodedData) and run.data.decoded.skipped:
        first = run.data.decoded.skipped[0]
        log(f"{run.data.skipped} unreadable image(s) of {cfg.data} left out (first: {first.key}: {first.reason})")
    resume(run)
    if rank == 0:
        write_text(run.out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    eval_src = (open_source(cfg.eval_train), open_source(cfg.eval_test)) if cfg.eval_train and cfg.eval_test else None
    final = _final_epoch(run)
    end = final if cfg.stop_after is None else min(final, run.start + cfg.stop_after)
    for epoch in range(run.start, end):
        row = train_epoch(run, epoch, progress)
        monitor = cfg.knn_every and (epoch + 1) % cfg.knn_every == 0
        if eval_src and rank == 0 and (monitor or epoch + 1 == final):
            row["knn_top1"] = evaluate_backbone(run.model.backbone, *eval_src, cfg.image_size, k=cfg.knn_k,
                                                num_workers=cfg.num_workers, device=run.device, precision=run.precision,
                                                decode_budget=budget_from_gb(cfg.decode_budget_gb)).knn_top1
        run.metrics["epochs"].append(row)
        if rank == 0:
            save(run, epoch)
    return run.metrics
