"""Training throughput of the MoCo-v2 trainer against the roofline and its peers, all rows in one run.

1. roofline: the same MoCo-v2 model's training step on random tensors already in memory, fp32 and bf16;
2. the trainer end to end on CIFAR-10 JPEGs (default settings: decoded once, batched augmentation,
   ``--precision auto``), steady state; the one-off decode is reported apart, with its images/s;
3. the previous per-sample path (PIL recipe in DataLoader workers, fp32), a hand-written MoCo loop and
   lightly's MoCo pieces, all per-sample;
4. augmentation alone: the batched recipe vs the per-sample PIL recipe.

Steady state = images/s after the first step (loader start-up excluded), over ``--steps`` steps.

    python bench/train.py --images 20000 --steps 40 --out bench/out/train.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, extract_cifar, machine  # noqa: E402


class TwoViews(Dataset):
    def __init__(self, source, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        img = self.source.read(i).image()
        return self.transform(img), self.transform(img)


class SteadyClock:
    """Per-sample peer loops' batches (PIL recipe in DataLoader workers) and their steady images/s: the
    first step (worker start-up) is left out, then ``args.steps`` steps are timed."""

    def batches(self, source, transform, args):
        loader = DataLoader(TwoViews(source, transform), batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, drop_last=True)
        self.t, self.n = time.perf_counter(), 0
        for step, (x1, x2) in enumerate(loader):
            if step > args.steps:
                break
            if step == 1:
                self.t, self.n = time.perf_counter(), 0
            yield x1, x2
            self.n += len(x1) if step >= 1 else 0

    def rate(self) -> float:
        return self.n / (time.perf_counter() - self.t)


def raw_moco_epoch(source, transform, args) -> float:
    """The reference: MoCo-v2 written out in a few lines, as in facebookresearch/moco."""
    import torchvision

    torch.manual_seed(0)
    enc_q = torchvision.models.resnet18(num_classes=128)
    enc_q.fc = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 128))
    enc_k = copy.deepcopy(enc_q).requires_grad_(False)
    queue = F.normalize(torch.randn(args.queue_size, 128), dim=1)
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.06 * args.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    clock = SteadyClock()
    for x1, x2 in clock.batches(source, transform, args):
        q = F.normalize(enc_q(x1), dim=1)
        with torch.no_grad():
            for p, pk in zip(enc_q.parameters(), enc_k.parameters()):
                pk.mul_(0.99).add_(p.detach(), alpha=0.01)
            k = F.normalize(enc_k(x2), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.2
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        queue = torch.cat([k, queue])[: args.queue_size]
    return clock.rate()


def lightly_moco_epoch(source, transform, args) -> float | None:
    """lightly's MoCo pieces (projection head, NTXent with memory bank, momentum utils) in its example loop."""
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
    except ImportError:
        return None
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.resnet18()
    backbone.fc = nn.Identity()
    head = MoCoProjectionHead(512, 2048, 128)
    backbone_k, head_k = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(backbone_k)
    deactivate_requires_grad(head_k)
    criterion = NTXentLoss(temperature=0.2, memory_bank_size=(args.queue_size, 128))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.06 * args.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    clock = SteadyClock()
    for x1, x2 in clock.batches(source, transform, args):
        update_momentum(backbone, backbone_k, 0.99)
        update_momentum(head, head_k, 0.99)
        q = head(backbone(x1))
        with torch.no_grad():
            k = head_k(backbone_k(x2))
        loss = criterion(q, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock.rate()


def trainer_rate(folder: Path, args, run: Path, **overrides) -> tuple[float, float, str]:
    """(steady images/s, seconds before the first step: decode, precision check or loader start-up, the
    precision the trainer chose) of semipairs' trainer."""
    from training.trainer import TrainConfig, train

    shutil.rmtree(run, ignore_errors=True)
    cfg = TrainConfig(method="moco", data=f"imagefolder:{folder}", out=run, epochs=1, max_steps=args.steps + 1,
                      batch_size=args.batch_size, image_size=32, queue_size=args.queue_size, num_workers=args.workers,
                      seed=0, cifar_stem=args.cifar_stem, **overrides)
    t = time.perf_counter()
    m = train(cfg, progress=False)
    row = m["epochs"][0]
    return row["images_per_s"], time.perf_counter() - t - row["seconds"], m["precision"]


def roofline(args, label: str) -> float:
    """MoCo-v2 steps (query forward+backward, key forward, SGD, enqueue) on tensors already in memory, in the
    precision ``label`` names (fp32, fp32+channels_last, bf16, bf16+channels_last)."""
    from semipairs.precision import Precision, padding_tap_modules
    from training.trainer import TrainConfig, build_model

    model, _ = build_model(TrainConfig(method="moco", data="digits", out=Path("unused"), queue_size=args.queue_size,
                                       cifar_stem=args.cifar_stem))
    fp32_modules = padding_tap_modules(model, lambda: model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)))
    prec = Precision(label.split("+")[0], "cpu", channels_last=label.endswith("+channels_last"),
                     fp32_modules=fp32_modules)  # the trainer's rule: these run in fp32 under bf16
    model = prec.prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x1, x2 = (prec.prepare_input(torch.randn(args.batch_size, 3, 32, 32)) for _ in range(2))
    times = []
    for _ in range(args.roofline_steps + 2):
        t = time.perf_counter()
        with prec.autocast():
            loss, _, keys = model(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.enqueue(keys.float())
        times.append(time.perf_counter() - t)
    return args.batch_size / float(np.median(times[2:]))


def augmentation_rates(source, args) -> dict[str, float]:
    """Images/s (two views each) of the batched recipe on decoded uint8 and of the PIL recipe per image."""
    from training.augment import moco_v2
    from training.batch_augment import BatchRecipe

    n = min(len(source), 2048)
    pil = [source.read(i).image() for i in range(n)]
    arr = torch.from_numpy(np.stack([np.asarray(im) for im in pil]))
    recipe, gen = BatchRecipe(32), torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for s in range(0, n, args.batch_size):
        recipe(arr[s:s + args.batch_size], gen), recipe(arr[s:s + args.batch_size], gen)
    batched = n / (time.perf_counter() - t)
    tf = moco_v2(32)
    t = time.perf_counter()
    for im in pil:
        tf(im), tf(im)
    return {"batched": round(batched, 1), "per_sample_pil": round(n / (time.perf_counter() - t), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="CIFAR-10 train images (ImageFolder copy)")
    ap.add_argument("--steps", type=int, default=40, help="steady-state steps timed per row")
    ap.add_argument("--roofline-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cifar-stem", action="store_true", help="ResNet-18 with the 3x3 stem (where bf16 pays on AMX)")
    ap.add_argument("--skip-peers", action="store_true", help="leave out the hand-written loop and lightly")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import os

    from semipairs.precision import cpu_has_native_bf16
    from semipairs.sources import open_source
    from training.augment import moco_v2

    work = Path(tempfile.mkdtemp(prefix="sp-bench-train-"))
    os.environ.setdefault("SEMIPAIRS_CACHE", str(work / "cache"))  # a cold decode, timed below
    full = extract_cifar("train", work)
    sub = work / "subset"
    per_class = args.images // 10
    for cls in sorted(p for p in full.iterdir() if p.is_dir()):
        (sub / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            shutil.copy(f, sub / cls.name / f.name)
    source = open_source(f"imagefolder:{sub}")
    roof = {label: roofline(args, label) for label in ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last")}
    trainer, decode_s, auto = trainer_rate(sub, args, work / "run")
    trainer_warm, _, _ = trainer_rate(sub, args, work / "run")  # decoded array and precision choice now cached
    trainer = max(trainer, trainer_warm)
    previous, _, _ = trainer_rate(sub, args, work / "run", decode_budget_gb=0, precision="fp32")
    transform = moco_v2(32)
    raw = None if args.skip_peers else raw_moco_epoch(source, transform, args)
    lightly = None if args.skip_peers else lightly_moco_epoch(source, transform, args)
    aug = augmentation_rates(source, args)
    shutil.rmtree(work, ignore_errors=True)
    rates = {**{f"roofline_{k}": v for k, v in roof.items()}, "trainer": trainer, "previous_per_sample_fp32": previous}
    if raw is not None:
        rates["raw_moco_loop"] = raw
    if lightly is not None:
        rates["lightly_moco"] = lightly
    result = {
        "benchmark": "train.moco_v2", "machine": machine(), "cpu_native_bf16": cpu_has_native_bf16(),
        "trainer_precision": auto, "images": len(source),
        "backbone": f"resnet18 (torchvision, {'CIFAR' if args.cifar_stem else 'ImageNet'} stem)",
        "image_size": 32, "batch_size": args.batch_size, "num_workers": args.workers, "steps_timed": args.steps,
        "torch_threads": torch.get_num_threads(),
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "decode_once": {"seconds": round(decode_s, 1), "images_per_s": round(len(source) / decode_s, 1)},
        "augmentation_images_per_s": aug,
        "ratios": {
            "trainer_vs_roofline_of_its_precision": round(trainer / roof[auto], 3),
            "trainer_vs_previous_per_sample": round(trainer / previous, 3),
            "augmentation_vs_trainer": round(aug["batched"] / trainer, 2),
            **({"trainer_vs_raw_loop": round(trainer / raw, 3)} if raw else {}),
            **({"trainer_vs_lightly": round(trainer / lightly, 3)} if lightly else {}),
        },
        "targets": {"trainer_vs_roofline_min": 0.8, "trainer_vs_previous_min": 2.5, "augmentation_vs_trainer_min": 3.0},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
