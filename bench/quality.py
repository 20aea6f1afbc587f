"""The CIFAR-10 quality protocol (DESIGN section 5), on the real images of ../shared/data/cifar10.

For each seed: pretrain MoCo-v2 (baseline) -> curate semantic pairs with that checkpoint (``ckpt:``
encoder, mutual kNN + score quantile) -> train MoCo-v2 again from scratch with the pairs under the
same budget (same optimizer steps, same schedule) -> kNN top-1 (k=200, T=0.07) on the test split for
both, and the pairs' precision / coverage against the labels.

CPU setting (about 30 minutes a seed on a 2-core machine): ResNet-18 (ImageNet stem) at 32 px,
20,000 training images (2,000 per class), batch 128, ``--steps`` optimizer steps per run.

    python bench/quality.py --steps 600 --seeds 0 --out bench/out/quality.json

GPU version (when a GPU is lent), as lightly's CIFAR-10 benchmark: ResNet-18 with the CIFAR stem,
all 50,000 images, 200 epochs, batch 512:

    python bench/quality.py --train-images 50000 --cifar-stem --batch-size 512 --epochs 200 --steps 0 --workers 8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, extract_cifar, machine  # noqa: E402


def subset(full: Path, dest: Path, per_class: int) -> Path:
    if not (dest / ".complete").exists():
        for cls in sorted(p for p in full.iterdir() if p.is_dir()):
            (dest / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob("*.jpg"))[:per_class]:
                shutil.copy(f, dest / cls.name / f.name)
        (dest / ".complete").touch()
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/sp-quality")
    ap.add_argument("--train-images", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per run (0: use --epochs)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--quantile", type=float, default=0.3, help="mining score quantile (after the mutual filter)")
    ap.add_argument("--pair-ratio", type=float, default=1.0)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--pair-encoder", default="ckpt", help="'ckpt' (the baseline's own checkpoint, the protocol) or an "
                    "encoder spec such as pixels, to ask whether more precise pairs help under the same budget")
    ap.add_argument("--reuse-baseline", action="store_true", help="keep an existing baseline run of the same seed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from curation.mine import MiningConfig
    from curation.pipeline import CurateConfig, curate
    from semipairs.dataset import load
    from semipairs.sources import open_source
    from training.augment import evaluation
    from training.checkpoint import load_backbone
    from training.evaluate import evaluate_backbone
    from training.trainer import TrainConfig, train

    work = Path(args.workdir)
    train_dir = subset(extract_cifar("train", work), work / f"train-{args.train_images}", args.train_images // 10)
    test_dir = extract_cifar("test", work)
    train_src, test_src = f"imagefolder:{train_dir}", f"imagefolder:{test_dir}"

    def run(seed: int, name: str, pairs: str | None) -> dict:
        out = work / f"seed{seed}" / name
        if not (args.reuse_baseline and pairs is None and (out / "checkpoint.pt").exists()):
            shutil.rmtree(out, ignore_errors=True)
        cfg = TrainConfig(method="moco", data=train_src, out=out, pairs=pairs, pair_ratio=args.pair_ratio, epochs=args.epochs,
                          max_steps=args.steps or None, batch_size=args.batch_size, image_size=32, cifar_stem=args.cifar_stem,
                          num_workers=args.workers, seed=seed)
        t = time.perf_counter()
        m = train(cfg, progress=True)
        seconds = time.perf_counter() - t
        model, spec, _ = load_backbone(out / "checkpoint.pt")
        res = evaluate_backbone(model, open_source(train_src), open_source(test_src), evaluation(32),
                                num_workers=args.workers)
        steps = sum(len(e["step_losses"]) for e in m["epochs"])
        return {"knn_top1": round(res.knn_top1, 2), "steps": steps, "epochs": len(m["epochs"]),
                "pair_samples": sum(e["pair_samples"] for e in m["epochs"]), "final_loss": round(m["epochs"][-1]["loss"], 4),
                "train_seconds": round(seconds), "checkpoint": str(out / "checkpoint.pt")}

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        base = run(seed, "baseline", None)
        t = time.perf_counter()
        encoder = f"ckpt:{base['checkpoint']}" if args.pair_encoder == "ckpt" else args.pair_encoder
        cur = curate(CurateConfig(source=train_src, encoder=encoder, store=work / "store",
                                  name=f"cifar-pairs-seed{seed}", version=f"1.0.{int(time.time())}", layout="reference",
                                  num_workers=args.workers, cache_dir=work / "cache",
                                  mining=MiningConfig(k=args.k, mutual=True, min_score_quantile=args.quantile, seed=seed)),
                     progress=False)
        stats = load(cur.path).manifest.stats
        curate_s = time.perf_counter() - t
        paired = run(seed, "with-pairs" if args.pair_encoder == "ckpt" else f"with-pairs-{args.pair_encoder}", str(cur.path))
        rows.append({"seed": seed, "baseline": base, "with_pairs": paired,
                     "pairs": {"num_pairs": stats.num_pairs, "coverage": round(stats.coverage, 4),
                               "images_in_pairs": round(stats.images_in_pairs, 4),
                               "label_precision": round(stats.label_precision or 0, 4), "curate_seconds": round(curate_s)},
                     "gain_points": round(paired["knn_top1"] - base["knn_top1"], 2)})
    emit({
        "benchmark": "quality.cifar10", "machine": machine(),
        "setting": {"train_images": args.train_images, "test_images": 10_000, "backbone": "resnet18",
                    "cifar_stem": args.cifar_stem, "image_size": 32, "batch_size": args.batch_size, "steps": args.steps,
                    "method": "moco", "pair_encoder": args.pair_encoder,
                    "mining": {"k": args.k, "mutual": True, "min_score_quantile": args.quantile},
                    "pair_ratio": args.pair_ratio, "knn": {"k": 200, "temperature": 0.07}},
        "runs": rows,
        "mean_gain_points": round(sum(r["gain_points"] for r in rows) / len(rows), 2), "target_gain_points": 2.0,
    }, args.out)


if __name__ == "__main__":
    main()
