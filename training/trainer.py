"""The training loop for MoCo-v2 and SimSiam, with semantic pairs (SePP-ID) and ReCo as options.

Writes ``RUN/checkpoint.pt`` (every epoch, atomically), ``RUN/metrics.json`` (per-epoch loss and kNN
top-1) and ``RUN/config.yaml``. A run resumes from its checkpoint and continues the same run: model,
momentum encoder, queue, optimizer, schedule, epoch and RNG states. Under torchrun it trains with DDP
(SyncBatchNorm, MoCo keys all-gathered into every rank's queue).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from semipairs.errors import SemipairsError
from semipairs.sources import open_source
from semipairs.torch_data import distributed
from training.augment import RECIPES, evaluation
from training.backbones import BackboneSpec, backbone_state, build_backbone
from training.checkpoint import CHECKPOINT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.data import SePPViews
from training.evaluate import evaluate_backbone
from training.moco import MoCo
from training.simsiam import SimSiam


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["moco", "simsiam"] = "moco"
    data: str
    out: Path
    pairs: str | None = Field(None, description="pair dataset (path or hf:// id) whose pairs join each epoch")
    pair_ratio: float = Field(1.0, ge=0, le=1, description="share of the pairs used per epoch")
    epochs: int = Field(100, ge=1)
    stop_after: int | None = Field(None, ge=1, description="stop after this many epochs of this call; resume later")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps in all (a fixed budget); the schedule spans them")
    batch_size: int = Field(256, ge=2)
    backbone: str = "resnet18"
    cifar_stem: bool = False
    image_size: int = 32
    lr: float = Field(0.06, gt=0, description="base LR for batch 256, scaled linearly")
    weight_decay: float = 5e-4
    temperature: float = 0.2
    queue_size: int = 4096
    moco_momentum: float = 0.99
    proj_dim: int = 128
    reco: bool = False
    reco_global_weight: float = 1.0
    reco_local_weight: float = 1.0
    knn_every: int = Field(0, ge=0, description="kNN top-1 on eval data every N epochs (0: only at the end)")
    knn_k: int = 200
    eval_train: str | None = None
    eval_test: str | None = None
    num_workers: int = 2
    device: str | None = None
    compile: bool = False
    seed: int = 0
    resume: bool = True


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> tuple[nn.Module, BackboneSpec]:
    spec = BackboneSpec(cfg.backbone, cifar_stem=cfg.cifar_stem, image_size=cfg.image_size)
    backbone, dim = build_backbone(spec)
    if cfg.method == "moco":
        weights = (cfg.reco_global_weight, cfg.reco_local_weight) if cfg.reco else (0.0, 0.0)
        model: nn.Module = MoCo(backbone, dim, cfg.proj_dim, queue_size=cfg.queue_size, momentum=cfg.moco_momentum,
                                temperature=cfg.temperature, reco_global_weight=weights[0], reco_local_weight=weights[1])
    else:
        model = SimSiam(backbone, dim)
    return model, spec


def _steps_per_epoch(n: int, batch: int, world: int, readers_per_rank: int) -> int:
    """Batches every rank can fill in an epoch: a rank whose readers run short must not leave others waiting."""
    per_rank = n // world - readers_per_rank
    steps = per_rank // batch
    if steps < 1:
        raise SemipairsError(f"{n} samples give no full batch of {batch} on {world} rank(s); lower --batch-size")
    return steps


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` (resuming from ``cfg.out/checkpoint.pt`` when present); the metrics written."""
    with distributed() as (rank, world):
        return _train(cfg, rank, world, progress)


def _train(cfg: TrainConfig, rank: int, world: int, progress: bool) -> dict[str, Any]:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    on_gpu = device.startswith("cuda")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed + rank)

    source = open_source(cfg.data)
    pairs = None
    if cfg.pairs:
        import semipairs

        pairs = semipairs.load(cfg.pairs)
    view = RECIPES[cfg.method](cfg.image_size)
    dataset = SePPViews(source, view, pairs, cfg.pair_ratio, seed=cfg.seed)
    steps = _steps_per_epoch(len(dataset), cfg.batch_size, world, max(1, cfg.num_workers))

    model, spec = build_model(cfg)
    model.to(device)
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr * cfg.batch_size * world / 256
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    ckpt_path = out / "checkpoint.pt"
    metrics: dict[str, Any] = {"method": cfg.method, "epochs": []}
    start = 0
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["epoch"])
        set_rng_state(state["rng"])
        if (out / "metrics.json").exists():
            metrics = json.loads((out / "metrics.json").read_text())
            metrics["epochs"] = metrics["epochs"][:start]

    train_model: nn.Module = model
    if world > 1:
        # SyncBatchNorm runs on GPUs only; CPU (gloo) ranks keep per-rank BN statistics
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(model) if on_gpu else model
        train_model = nn.parallel.DistributedDataParallel(
            synced, broadcast_buffers=False, device_ids=[torch.device(device).index] if on_gpu else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    eval_src = (open_source(cfg.eval_train), open_source(cfg.eval_test)) if cfg.eval_train and cfg.eval_test else None
    final = min(cfg.epochs, -(-total // steps))  # the run's last epoch (max_steps may end it early)
    end = final if cfg.stop_after is None else min(final, start + cfg.stop_after)
    for epoch in range(start, end):
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                            pin_memory=on_gpu)
        model.train()
        losses, parts_sum, pairs_seen, t0 = [], {}, 0, time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, unit="step")
        for step, (v1, v2, info) in enumerate(loader):
            if step >= steps or epoch * steps + step >= total:
                break
            v1, v2 = v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)
            if on_gpu:
                v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                loss, parts, keys = train_model(v1, v2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if keys is not None:
                model.enqueue(keys.float())
            losses.append(float(loss.detach()))
            pairs_seen += int(info["kind"].sum())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
        bar.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "step_losses": losses,
                               "parts": {k: v / len(losses) for k, v in parts_sum.items()}, "pair_samples": pairs_seen,
                               "seconds": round(time.perf_counter() - t0, 2), "lr": scheduler.get_last_lr()[0]}
        last = epoch + 1 == final
        if eval_src and rank == 0 and ((cfg.knn_every and (epoch + 1) % cfg.knn_every == 0) or last):
            row["knn_top1"] = evaluate_backbone(model.backbone, *eval_src, evaluation(cfg.image_size), k=cfg.knn_k,
                                                num_workers=cfg.num_workers, device=device).knn_top1
        metrics["epochs"].append(row)
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "semipairs_checkpoint": CHECKPOINT_VERSION, "method": cfg.method, "backbone_spec": spec.to_dict(),
                "backbone": backbone_state(model.backbone),
                "teacher": backbone_state(model.backbone_k) if cfg.method == "moco" else None,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "rng": rng_state(), "config": cfg.model_dump(mode="json"),
            })
            tmp = out / "metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=1))
            tmp.replace(out / "metrics.json")
    return metrics
