"""Training throughput: semipairs' MoCo-v2 trainer vs a minimal hand-written MoCo loop (same backbone,
batch, augmentations, workers) and, when installed, lightly's MoCo building blocks, in one run.

Images/s over whole epochs (DataLoader start included) on CIFAR-10 test JPEGs; best of ``--repeat``.

    python bench/train.py --images 4096 --batch-size 128 --epochs 1 --out bench/out/train.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

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


def raw_moco_epoch(source, transform, args) -> float:
    """The reference: MoCo-v2 written out in a few lines, as in facebookresearch/moco."""
    import torchvision

    torch.manual_seed(0)
    enc_q = torchvision.models.resnet18(num_classes=128)
    enc_q.fc = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 128))
    enc_k = copy.deepcopy(enc_q).requires_grad_(False)
    queue = F.normalize(torch.randn(args.queue_size, 128), dim=1)
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.06 * args.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TwoViews(source, transform), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True)
    t = time.perf_counter()
    n = 0
    for x1, x2 in loader:
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
        n += len(x1)
    return n / (time.perf_counter() - t)


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
    loader = DataLoader(TwoViews(source, transform), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True)
    t = time.perf_counter()
    n = 0
    for x1, x2 in loader:
        update_momentum(backbone, backbone_k, 0.99)
        update_momentum(head, head_k, 0.99)
        q = head(backbone(x1))
        with torch.no_grad():
            k = head_k(backbone_k(x2))
        loss = criterion(q, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x1)
    return n / (time.perf_counter() - t)


def semipairs_epoch(folder: Path, args, run: Path) -> float:
    from training.trainer import TrainConfig, train

    shutil.rmtree(run, ignore_errors=True)
    cfg = TrainConfig(method="moco", data=f"imagefolder:{folder}", out=run, epochs=1, batch_size=args.batch_size,
                      image_size=32, queue_size=args.queue_size, num_workers=args.workers, seed=0)
    m = train(cfg, progress=False)
    row = m["epochs"][0]
    return len(row["step_losses"]) * args.batch_size / row["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from semipairs.sources import open_source
    from training.augment import moco_v2

    work = Path(tempfile.mkdtemp(prefix="sp-bench-train-"))
    full = extract_cifar("test", work)
    sub = work / "subset"
    for f in sorted(full.rglob("*.jpg"))[: args.images]:
        (sub / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.parent.name / f.name)
    source = open_source(f"imagefolder:{sub}")
    transform = moco_v2(32)
    rates: dict[str, list[float]] = {"semipairs_trainer": [], "raw_moco_loop": [], "lightly_moco": []}
    for _ in range(args.repeat):
        rates["raw_moco_loop"].append(raw_moco_epoch(source, transform, args))
        rates["semipairs_trainer"].append(semipairs_epoch(sub, args, work / "run"))
        lr = lightly_moco_epoch(source, transform, args)
        if lr is not None:
            rates["lightly_moco"].append(lr)
    best = {k: max(v) for k, v in rates.items() if v}
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "train.moco_v2", "machine": machine(), "images": len(source), "backbone": "resnet18 (torchvision)",
        "image_size": 32, "batch_size": args.batch_size, "num_workers": args.workers, "torch_threads": torch.get_num_threads(),
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_vs_raw_loop": round(best["semipairs_trainer"] / best["raw_moco_loop"], 3), "target_vs_raw_min": 0.9,
    }
    if "lightly_moco" in best:
        result["ratio_vs_lightly"] = round(best["semipairs_trainer"] / best["lightly_moco"], 3)
        result["target_vs_lightly_min"] = 1.0
    emit(result, args.out)


if __name__ == "__main__":
    main()
