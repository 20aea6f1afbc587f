r"""The CIFAR-10 quality protocol (DESIGN section 5), on the real images of ../shared/data/cifar10.

The defaults are the protocol the pair path is measured with, on a 2-core CPU: ResNet-18 (ImageNet stem) at
32 px, 10,000 training images (1,000 per class), batch 128, 3,500 optimizer steps a run (the fewest measured
that put the SimCLR baseline 15 points above random init: 47.35-48.10 on 3 seeds vs 32.05, docs/benchmarks.md), SimCLR with
in-batch partner positives (``train --method simclr --pair-mode inbatch``), kNN top-1 (k=200, T=0.07) on the
10,000 test images; random-init kNN is recorded with every result. About 25 minutes a run on a CPU with
avx512_bf16, 70-110 on an AVX2-only one. The first curve (3 seeds) was measured at ``--steps 2000``.

Precision curve (``--curve 100,90,75,60,45,30``): pairs built from the labels at a controlled precision
and coverage (``--coverage`` of the images are anchors, each with ``--per-anchor`` positives of its class,
or, with probability 1 - precision, of another class), packed as a reference-layout dataset and trained
under the same budget. A test of the pair path only: labels never enter the self-mined path.

    python bench/quality.py --curve 100,90 --out docs/results/curve.json
    python bench/quality.py --curve 30 --random-init-knn 32.05 --baseline-from docs/results/curve.json --out ...
    python bench/quality.py --baseline-only --steps 400 --lr 0.02 --out ...   # one setting's baseline alone
    python bench/quality.py --merge docs/results/a.json,docs/results/b.json --out docs/results/curve.json \
        --plot docs/precision_curve.png      # one curve from runs of the same budget and CPU kind

Self-mined (no ``--curve``): baseline -> curate pairs with that checkpoint (``ckpt:`` encoder, mutual kNN +
score quantile) -> train again from scratch with the pairs under the same budget.

    python bench/quality.py --seeds 0,1 --out bench/out/quality.json

Any label-free sampler instead: ``--pair-encoder SPEC`` (e.g. ``ckpt:RUN/checkpoint.pt``), ``--agree-with SPEC``
(curate's agreement of two encoders), the mining flags, and ``--baseline-from`` to reuse a measured baseline:

    python bench/quality.py --seeds 1 --random-init-knn 32.05 \
        --baseline-from docs/results/steps-probe-simclr-3500-seed1-avx512bf16.json \
        --pair-encoder ckpt:RUN/checkpoint.pt --agree-with pixels --k 10 --no-mutual --quantile none \
        --max-per-anchor 10 --duplicate-threshold 0.999 --out docs/results/selfmined-agree-simclr-3500-seed1.json

Earlier CPU protocols (MoCo-v2, 20,000 images, 600-4,000 steps) are reproduced with
``--train-images 20000 --method moco --pair-mode extra --per-anchor 1``. GPU version (when a GPU is lent), as
lightly's CIFAR-10 benchmark: ResNet-18 with the CIFAR stem, all 50,000 images, 200 epochs, batch 512:

    python bench/quality.py --train-images 50000 --cifar-stem --batch-size 512 --epochs 200 --steps 0 --workers 8 \
        --method moco --pair-mode extra
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from bench._common import emit, extract_cifar, machine  # noqa: E402
from semipairs.config import PRECISIONS  # noqa: E402


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
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=3500, help="optimizer steps per run (0: use --epochs)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.06, help="base LR for batch 256 (train --lr), scaled linearly")
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--head-norm", action="store_true", help="BN in the projection head (train --head-norm)")
    ap.add_argument("--temperature", type=float, default=0.2, help="contrastive temperature (train's temperature)")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="train --precision (auto: bf16 only where the CPU has it natively and the check agrees)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--quantile", type=lambda v: None if v == "none" else float(v), default=0.3,
                    help="mining score quantile (after the mutual filter); 'none': no threshold")
    ap.add_argument("--no-mutual", action="store_true", help="self-mined: keep candidates that are not mutual")
    ap.add_argument("--max-per-anchor", type=int, default=1, help="self-mined: pairs kept per anchor")
    ap.add_argument("--duplicate-threshold", type=float, default=0.98,
                    help="self-mined: scores at or above are near-duplicates (a trained checkpoint's post-ReLU "
                         "features sit at cosine 0.8-1.0: use 0.999 there)")
    ap.add_argument("--agree-with", default=None, help="self-mined: a second encoder (curate --agree-with): keep "
                    "pairs both encoders find among the k nearest neighbours")
    ap.add_argument("--pair-ratio", type=float, default=1.0)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--pair-encoder", default="ckpt", help="'ckpt' (the baseline's own checkpoint, the protocol) or an "
                    "encoder spec such as pixels, to ask whether more precise pairs help under the same budget")
    ap.add_argument("--reuse-baseline", action="store_true", help="keep an existing baseline run of the same seed")
    ap.add_argument("--baseline-from", default=None,
                    help="curve: take each seed's baseline row from this earlier result JSON (same setting, same CPU "
                         "kind, checked) instead of training it again")
    ap.add_argument("--random-init-knn", type=float, default=None,
                    help="the untrained backbone's kNN top-1 when already measured in this setting (skips measuring it)")
    ap.add_argument("--curve", default=None, help="comma-separated pair precisions in percent: label-built pairs")
    ap.add_argument("--baseline-only", action="store_true", help="train and score the baseline of each seed only "
                    "(settings such as --lr or --steps compared on their own)")
    ap.add_argument("--coverage", type=float, default=1.0, help="curve: share of training images that anchor pairs")
    ap.add_argument("--per-anchor", type=int, default=10, help="curve: positives per anchor")
    ap.add_argument("--method", default="simclr", help="simclr, moco, msf, wcl or simsiam (train --method)")
    ap.add_argument("--baseline-method", default=None,
                    help="with --baseline-from: the baseline's method when it differs from --method (pair options of "
                    "several methods measured against the protocol's one baseline; default: --method)")
    ap.add_argument("--pair-mode", default="inbatch", help="extra, swap, multi or inbatch (train --pair-mode)")
    ap.add_argument("--swap-prob", type=float, default=0.5)
    ap.add_argument("--pair-weight", type=float, default=1.0)
    ap.add_argument("--pair-warmup", type=float, default=0.0)
    ap.add_argument("--test-images", type=int, default=10_000, help="test images scored by kNN (first N per class share)")
    ap.add_argument("--plot", default=None, help="curve: write the gain-vs-precision plot here (PNG)")
    ap.add_argument("--merge", default=None, help="comma-separated curve JSONs of one budget and CPU kind: write them "
                    "as one curve (--out, --plot) without training")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.baseline_method and not args.baseline_from:
        raise SystemExit("error: --baseline-method names the method of a --baseline-from result; give --baseline-from")
    if args.merge:
        merged = merge_curves(args.merge.split(","))
        emit(merged, args.out)
        if args.plot:
            plot_curve(merged, args.plot)
        return

    from curation.mine import MiningConfig
    from curation.pipeline import CurateConfig, curate
    from semipairs.checkpoint import load_backbone
    from semipairs.dataset import load
    from semipairs.sources import open_source
    from training.evaluate import evaluate_backbone
    from training.trainer import TrainConfig, train

    work = Path(args.workdir)
    train_dir = subset(extract_cifar("train", work), work / f"train-{args.train_images}", args.train_images // 10)
    test_dir = extract_cifar("test", work)
    if args.test_images < 10_000:
        test_dir = subset(test_dir, work / f"test-{args.test_images}", args.test_images // 10)
    train_src, test_src = f"imagefolder:{train_dir}", f"imagefolder:{test_dir}"

    def run(seed: int, name: str, pairs: str | None) -> dict:
        out = work / f"seed{seed}" / name
        if not (args.reuse_baseline and pairs is None and (out / "checkpoint.pt").exists()):
            shutil.rmtree(out, ignore_errors=True)
        cfg = TrainConfig(method=args.method, data=train_src, out=out, pairs=pairs, pair_ratio=args.pair_ratio,
                          epochs=args.epochs, max_steps=args.steps or None, batch_size=args.batch_size, image_size=32,
                          cifar_stem=args.cifar_stem, head_norm=args.head_norm,
                          num_workers=args.workers, seed=seed, pair_mode=args.pair_mode, swap_prob=args.swap_prob,
                          pair_weight=args.pair_weight, pair_warmup=args.pair_warmup, lr=args.lr,
                          temperature=args.temperature, precision=args.precision)
        t = time.perf_counter()
        m = train(cfg, progress=True)
        seconds = time.perf_counter() - t
        model, spec, _ = load_backbone(out / "checkpoint.pt")
        res = evaluate_backbone(model, open_source(train_src), open_source(test_src), 32,
                                num_workers=args.workers)
        steps = sum(len(e["step_losses"]) for e in m["epochs"])
        return {"knn_top1": round(res.knn_top1, 2), "steps": steps, "epochs": len(m["epochs"]),
                "pair_samples": sum(e["pair_samples"] for e in m["epochs"]), "final_loss": round(m["epochs"][-1]["loss"], 4),
                "train_seconds": round(seconds), "train_precision": m.get("precision"),
                "checkpoint": str(out / "checkpoint.pt")}

    seeds = [int(s) for s in args.seeds.split(",")]
    setting = {"train_images": args.train_images, "test_images": args.test_images, "backbone": "resnet18",
               "cifar_stem": args.cifar_stem, "image_size": 32, "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
               "method": args.method, "pair_mode": args.pair_mode, "swap_prob": args.swap_prob, "pair_weight": args.pair_weight,
               "pair_warmup": args.pair_warmup, "pair_ratio": args.pair_ratio, "knn": {"k": 200, "temperature": 0.07},
               "temperature": args.temperature, "precision": args.precision, "head_norm": args.head_norm,
               "baseline_method": args.baseline_method or args.method}
    setting["random_init_knn"] = (args.random_init_knn if args.random_init_knn is not None
                                  else random_init_knn(train_src, test_src, args))
    if args.curve or args.baseline_only:
        run_curve(args, seeds, run, train_src, work, setting)
        return
    rows = []
    mining = {"k": args.k, "mutual": not args.no_mutual, "min_score_quantile": args.quantile,
              "max_per_anchor": args.max_per_anchor, "duplicate_threshold": args.duplicate_threshold}
    for seed in seeds:
        base = earlier_baseline(args.baseline_from, setting, seed) if args.baseline_from else run(seed, "baseline", None)
        t = time.perf_counter()
        encoder = f"ckpt:{base['checkpoint']}" if args.pair_encoder == "ckpt" else args.pair_encoder
        cur = curate(CurateConfig(source=train_src, encoder=encoder, agree_with=args.agree_with, store=work / "store",
                                  name=f"cifar-pairs-seed{seed}", version=f"1.0.{int(time.time())}", layout="reference",
                                  num_workers=args.workers, cache_dir=work / "cache",
                                  mining=MiningConfig(**mining, seed=seed)),
                     progress=False)
        manifest = load(cur.path).manifest
        stats, parent = manifest.stats, manifest.parent  # parent: the pair dataset a round-2 miner was trained with
        curate_s = time.perf_counter() - t
        paired = run(seed, run_name(args.pair_encoder, args.agree_with, mining), str(cur.path))
        rows.append({"seed": seed, "baseline": base, "with_pairs": paired,
                     "pairs": {"num_pairs": stats.num_pairs, "coverage": round(stats.coverage, 4),
                               "images_in_pairs": round(stats.images_in_pairs, 4),
                               "label_precision": round(stats.label_precision or 0, 4), "curate_seconds": round(curate_s),
                               "mining_counts": cur.counts, "dataset": str(cur.path),
                               "parent": f"{parent.name} {parent.version}" if parent else None},
                     "gain_points": round(paired["knn_top1"] - base["knn_top1"], 2)})
    emit({
        "benchmark": "quality.cifar10", "machine": machine(),
        "setting": {**setting, "pair_encoder": args.pair_encoder, "agree_with": args.agree_with, "mining": mining},
        "runs": rows,
        "mean_gain_points": round(sum(r["gain_points"] for r in rows) / len(rows), 2), "target_gain_points": 2.0,
    }, args.out)


def run_name(pair_encoder: str, agree_with: str | None, mining: dict) -> str:
    """The pair run's directory: one per encoder, second encoder and mining setting (two settings mined with one
    encoder must not share a directory: the second run would delete the first one's checkpoint), never a path
    inside a path."""
    knobs = f"k{mining['k']}-m{mining['max_per_anchor']}{'' if mining['mutual'] else '-nm'}"
    if mining["min_score_quantile"] is not None:
        knobs += f"-q{mining['min_score_quantile']:g}"
    slug = "".join(c if c.isalnum() else "-" for c in f"{pair_encoder}-{agree_with or ''}").strip("-")
    return f"with-pairs-{knobs}" if pair_encoder == "ckpt" and not agree_with else f"with-pairs-{slug[-60:]}-{knobs}"


def random_init_knn(train_src: str, test_src: str, args) -> float:
    """kNN top-1 of the untrained backbone (seed 0): the floor a budget must clear by 15 points."""
    import torch

    from semipairs.backbones import BackboneSpec, build_backbone
    from semipairs.sources import open_source
    from training.evaluate import evaluate_backbone

    torch.manual_seed(0)
    model, _ = build_backbone(BackboneSpec("resnet18", cifar_stem=args.cifar_stem, image_size=32))
    res = evaluate_backbone(model.eval(), open_source(train_src), open_source(test_src), 32, num_workers=args.workers)
    return round(res.knn_top1, 2)


def label_pairs(labels: list[int], precision: float, coverage: float, per_anchor: int, seed: int) -> tuple:
    """(anchor rows, positive rows, true share): positives of the anchor's class with probability ``precision``."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    anchors = np.repeat(rng.permutation(len(y))[: int(round(coverage * len(y)))], per_anchor)
    same = rng.random(len(anchors)) < precision
    positives = np.empty_like(anchors)
    for i, (a, s) in enumerate(zip(anchors, same)):
        if s:
            pool = by_class[y[a]]
        else:
            other = rng.choice([c for c in by_class if c != y[a]])
            pool = by_class[other]
        p = a
        while p == a:
            p = int(rng.choice(pool))
        positives[i] = p
    keep = np.unique(np.stack([anchors, positives], 1), axis=0)  # no repeated pair
    return keep[:, 0], keep[:, 1], float((y[keep[:, 0]] == y[keep[:, 1]]).mean())


def run_curve(args, seeds, run, train_src: str, work: Path, setting: dict) -> None:
    """Baseline and one label-built pair dataset per precision, per seed; the JSON is rewritten after every run."""
    import pandas as pd

    from semipairs.pack import pack
    from semipairs.sources import open_source

    src = open_source(train_src)
    keys, labels = src.keys(), src.labels()
    result = {"benchmark": "quality.precision_curve", "machine": machine(), "setting": {
        **setting, "coverage": args.coverage, "per_anchor": args.per_anchor}, "runs": []}
    for seed in seeds:
        base = earlier_baseline(args.baseline_from, setting, seed) if args.baseline_from else run(seed, "baseline", None)
        result["runs"].append({"seed": seed, "precision": None, "kind": "baseline", **base})
        emit_quiet(result, args.out)
        for pct in [int(p) for p in args.curve.split(",")] if args.curve else []:
            a, p, true = label_pairs(labels, pct / 100, args.coverage, args.per_anchor, seed)
            csv = work / f"label-pairs-{pct}-seed{seed}.csv"
            pd.DataFrame({"anchor_key": [keys[i] for i in a], "positive_key": [keys[i] for i in p]}).to_csv(csv, index=False)
            name = f"label-{pct}-{args.per_anchor}x{args.coverage}-seed{seed}"
            shutil.rmtree(work / "curve-store" / name, ignore_errors=True)
            ds = pack(train_src, csv, work / "curve-store", name, "1.0.0", layout="reference", progress=False)
            method = "" if args.method == "simclr" else f"{args.method}-"  # simclr: the names of earlier runs
            res = run(seed, f"curve-{method}{args.pair_mode}-{pct}", str(ds))
            result["runs"].append({"seed": seed, "precision": round(true, 4), "num_pairs": len(a), "kind": "pairs", **res,
                                   "gain_points": round(res["knn_top1"] - base["knn_top1"], 2)})
            emit_quiet(result, args.out)
    emit(result, args.out)
    if args.plot:
        plot_curve(result, args.plot)


SAME_BUDGET = ("train_images", "test_images", "backbone", "cifar_stem", "image_size", "batch_size", "steps", "lr", "temperature",
               "method", "knn", "random_init_knn", "precision", "head_norm")


def setting_of(result: dict) -> dict:
    """A result's setting; results written before --lr / --temperature / --precision / --head-norm existed ran at base LR 0.06,
    T 0.2, precision auto, no head BN."""
    return {"lr": 0.06, "temperature": 0.2, "precision": "auto", "head_norm": False, **result["setting"]}


def earlier_baseline(path: str, setting: dict, seed: int) -> dict:
    """The baseline row of ``seed`` from an earlier run of the same budget on the same CPU kind, or SystemExit."""
    old = json.loads(Path(path).read_text())
    old_setting = setting_of(old)
    setting = {**setting, "method": setting.get("baseline_method", setting["method"])}  # the baseline's own method
    differ = [k for k in SAME_BUDGET if old_setting.get(k) != setting.get(k)]
    if differ:
        raise SystemExit(f"error: {path}: another budget ({', '.join(differ)} differ); train the baseline again")
    if old["machine"]["cpu_flags"] != machine()["cpu_flags"]:
        raise SystemExit(f"error: {path}: measured on another CPU kind ({old['machine']['cpu_flags']})")
    rows = [r for r in old["runs"] if r["kind"] == "baseline" and r["seed"] == seed]
    if not rows:
        raise SystemExit(f"error: {path}: no baseline row for seed {seed}")
    return {**{k: v for k, v in rows[0].items() if k not in ("seed", "precision", "kind")}, "from": path}


def merge_curves(paths: list[str]) -> dict:
    """Runs of several curve results as one: same budget (``SAME_BUDGET``) and CPU kind, or SystemExit; a run
    measured twice (same seed and kind and precision) keeps its first row."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    first = setting_of(results[0])
    merged = {**results[0], "setting": first, "runs": [], "merged_from": paths}
    seen = set()
    for path, res in zip(paths, results):
        setting = setting_of(res)
        differ = [k for k in SAME_BUDGET if setting.get(k) != first.get(k)]
        if differ or res["machine"]["cpu_flags"] != results[0]["machine"]["cpu_flags"]:
            raise SystemExit(f"error: {path}: another budget or CPU kind than {paths[0]} ({', '.join(differ) or 'cpu_flags'})")
        for r in res["runs"]:
            key = (r["seed"], r["kind"], None if r["precision"] is None else round(r["precision"], 2))
            if key not in seen:
                seen.add(key)
                merged["runs"].append({"from": path, **r})  # a row merged before keeps its first source
    merged["runs"].sort(key=lambda r: (r["seed"], r["kind"] != "baseline", -(r["precision"] or 0)))
    merged["summary"] = summarise_curve(merged["runs"])
    return merged


def summarise_curve(runs: list[dict]) -> dict:
    """Gain per precision over the seeds measured (mean, min, max) and the break-even precision: where the mean
    curve, interpolated linearly between measured levels, first rises through 0 (None when every level is
    above or every level below 0: then it lies outside the range measured, and ``break_even_bound`` says which side)."""
    pairs = [r for r in runs if r["kind"] == "pairs"]
    levels = sorted({round(r["precision"] * 100) for r in pairs})
    rows = []
    for lv in levels:
        at = [r for r in pairs if round(r["precision"] * 100) == lv]
        gains = [r["gain_points"] for r in at]
        rows.append({"precision_pct": lv, "seeds": sorted(r["seed"] for r in at),
                     "mean_gain": round(float(np.mean(gains)), 2), "min_gain": min(gains), "max_gain": max(gains)})
    even, bound = None, None
    for lo, hi in zip(rows, rows[1:]):
        if lo["mean_gain"] < 0 <= hi["mean_gain"]:
            t = -lo["mean_gain"] / (hi["mean_gain"] - lo["mean_gain"])
            even = round(lo["precision_pct"] + t * (hi["precision_pct"] - lo["precision_pct"]), 1)
            break
    if even is None and rows:
        bound = f"below {rows[0]['precision_pct']}%" if rows[0]["mean_gain"] >= 0 else f"above {rows[-1]['precision_pct']}%"
    return {"by_precision": rows, "break_even_precision_pct": even, "break_even_bound": bound}


def emit_quiet(result: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def plot_curve(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [r for r in result["runs"] if r["kind"] == "pairs"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for seed in sorted({r["seed"] for r in pairs}):
        pts = [(r["precision"] * 100, r["gain_points"]) for r in pairs if r["seed"] == seed]
        ax.scatter(*zip(*pts), s=18, label=f"seed {seed}")
    mean = summarise_curve(result["runs"])["by_precision"]  # the mean over seeds at each precision asked
    ax.plot([r["precision_pct"] for r in mean], [r["mean_gain"] for r in mean], color="black", lw=1, label="mean over seeds")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(2, color="green", lw=0.8, ls="--", label="+2")
    s = result["setting"]
    flags = "native bf16" if "avx512_bf16" in result["machine"]["cpu_flags"] else "AVX2"
    ax.set(xlabel="pair precision (%)", ylabel="kNN top-1 gain (points)",
           title=f"{s['method']} {s['pair_mode']}, {s['steps']} steps, {s['train_images']} images ({flags})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
