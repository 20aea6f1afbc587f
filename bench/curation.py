"""Curation benchmarks (JSON). Three parts, each against a reference in the same run:

- mining: N x d precomputed embeddings -> pairs (load, checks, normalise, faiss index, batched search,
  mining) vs raw ``faiss.IndexFlatIP`` add + search of the same matrix; wall time and peak RSS, each
  side in its own fresh process.
- embed: the embedding stage (DataLoader decoding JPEGs in workers, encoder, chunked cache) vs the same
  model's forward over pre-decoded tensors.
- quality: precision / coverage of pairs mined on CIFAR-10 train with an offline encoder: plain top-1,
  mutual, mutual + threshold (a curve), and top-1 + threshold for reference.
- command: the whole ``semipairs curate --source imagefolder:CIFAR-train --embeddings E.npy --layout reference``
  (50,000 images, default audit) vs raw ``faiss.IndexFlatIP`` add + search of the same matrix, each in its
  own fresh process: wall time and peak RSS.
- scale: synthetic clustered embeddings (d=256, float16) in clip-retrieval's layout at each ``--sizes`` N:
  the whole ``semipairs curate --source embeddings:DIR`` command (default index choice and audit) vs raw
  faiss with the same factory string, nprobe and training-sample size, each in its own fresh process:
  wall time, peak RSS, bytes per vector, and the command's recall@10 against exact search.

    python bench/curation.py --part mining --n 100000 --dim 512
    python bench/curation.py --part embed --images 2048 --image-size 128
    python bench/curation.py --part quality --encoder pixels
    python bench/curation.py --part command --dim 512 --workdir /tmp/sp-bench
    python bench/curation.py --part scale --sizes 100000,1000000 --out bench/out/scale.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, extract_cifar, machine, run_child  # noqa: E402

RAW_MINING = """
import time, numpy as np, faiss
t = time.perf_counter()
x = np.load({path!r})
index = faiss.IndexFlatIP(x.shape[1]); index.add(x)
D, I = index.search(x, {k} + 1)
print(time.perf_counter() - t)
"""

SP_MINING = """
import time
from curation.vectors import Rows, drop_degenerate, load_embeddings
from curation.pipeline import mine_embeddings
from curation.mine import MiningConfig
class Source:  # stands in for a source: only its length and name are needed
    spec = "bench"
    def __len__(self): return {n}
t = time.perf_counter()
emb = load_embeddings({path!r}, Source())
drop_degenerate(emb, [str(i) for i in range({n})])
res, info = mine_embeddings(Rows(emb.vectors), "cosine", MiningConfig(k={k}, mutual=True), progress=False)
print(time.perf_counter() - t)
"""

RAW_SCALE = """
import glob, time, numpy as np, faiss
t = time.perf_counter()
x = np.concatenate([np.load(f).astype(np.float32) for f in sorted(glob.glob({root!r} + "/img_emb/img_emb_*.npy"),
                    key=lambda f: int(f.rsplit("_", 1)[1][:-4]))])
x /= np.linalg.norm(x, axis=1, keepdims=True)
index = faiss.index_factory(x.shape[1], {factory!r}, faiss.METRIC_INNER_PRODUCT)
if not index.is_trained:
    index.train(x[np.sort(np.random.default_rng(0).choice(len(x), {train}, replace=False))])
if {nprobe}:
    faiss.extract_index_ivf(index).nprobe = {nprobe}
index.add(x)
for s in range(0, len(x), 16384):
    D, I = index.search(x[s:s + 16384], {k} + 1)
print(time.perf_counter() - t)
"""

CLI_TIMED = """
import sys, time
from semipairs.cli import main
sys.argv = {argv!r}
t = time.perf_counter()
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print("WALL", time.perf_counter() - t)
"""


def clustered_npy(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """n rows around 1,000 Gaussian centres, saved as float32 .npy (the mining and command parts' input)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centers[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(path, x)


def part_mining(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sp-bench-mine-"))
    clustered_npy(work / "emb.npy", args.n, args.dim)
    rows = []
    for _ in range(args.repeat):
        raw_rss, raw_t = run_child(RAW_MINING.format(path=str(work / "emb.npy"), k=args.k))
        sp_rss, sp_t = run_child(SP_MINING.format(path=str(work / "emb.npy"), k=args.k, n=args.n))
        rows.append((float(raw_t), raw_rss, float(sp_t), sp_rss))
    shutil.rmtree(work, ignore_errors=True)
    raw_t, raw_rss, sp_t, sp_rss = (min(r[i] for r in rows) for i in range(4))
    return {
        "n": args.n, "dim": args.dim, "k": args.k, "matrix_mb": args.n * args.dim * 4 / 2**20,
        "seconds": {"raw_faiss_flatip": round(raw_t, 2), "semipairs_mining": round(sp_t, 2)},
        "peak_rss_mb": {"raw_faiss_flatip": round(raw_rss), "semipairs_mining": round(sp_rss)},
        "wall_time_ratio": round(sp_t / raw_t, 3), "peak_memory_ratio": round(sp_rss / raw_rss, 3),
        "targets": {"wall_time_ratio_max": 1.2, "peak_memory_ratio_max": 1.5},
    }


def part_command(args) -> dict:
    import json

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sp-bench-cmd-"))
    folder = extract_cifar("train", work)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    clustered_npy(work / "emb.npy", n, args.dim)
    rows = []
    for _ in range(args.repeat):
        shutil.rmtree(work / "store", ignore_errors=True)
        raw_rss, raw_t = run_child(RAW_MINING.format(path=str(work / "emb.npy"), k=args.k))
        sp_rss, out = run_child(CLI_TIMED.format(argv=[
            "semipairs", "curate", "--source", f"imagefolder:{folder}", "--embeddings", str(work / "emb.npy"),
            "--layout", "reference", "--store", str(work / "store"), "--name", "cmd", "--k", str(args.k), "--json"]))
        result = json.loads(out.rsplit("WALL", 1)[0])
        rows.append((float(raw_t), raw_rss, float(out.rsplit("WALL", 1)[1]), sp_rss, result["seconds"]))
    best = min(rows, key=lambda r: r[2])
    raw_t, raw_rss = min(r[0] for r in rows), min(r[1] for r in rows)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "n": n, "dim": args.dim, "k": args.k, "layout": "reference", "audit": "default",
        "seconds": {"raw_faiss_flatip": round(raw_t, 2), "semipairs_curate": round(best[2], 2)},
        "semipairs_stages": best[4],
        "peak_rss_mb": {"raw_faiss_flatip": round(raw_rss), "semipairs_curate": round(best[3])},
        "wall_time_ratio": round(best[2] / raw_t, 3), "peak_memory_ratio": round(best[3] / raw_rss, 3),
        "targets": {"wall_time_ratio_max": 1.2, "peak_memory_ratio_max": 1.5},
    }


def write_clip_layout(root: Path, n: int, dim: int, part_rows: int = 1_000_000, seed: int = 0) -> None:
    """Clustered unit vectors as clip-retrieval writes them (float16 img_emb_N.npy + metadata_N.parquet),
    generated a block at a time: ~200 vectors per cluster, clusters grouped under 256 super-clusters, so
    neighbours are close but not trivially separable."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_clusters = max(10, n // 200)
    supers = rng.normal(size=(256, dim)).astype(np.float32)
    centers = supers[rng.integers(0, 256, n_clusters)] + 0.6 * rng.normal(size=(n_clusters, dim)).astype(np.float32)
    (root / "img_emb").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, n, part_rows)):
        stop = min(n, start + part_rows)
        out = np.lib.format.open_memmap(root / "img_emb" / f"img_emb_{part}.npy", "w+", np.float16, (stop - start, dim))
        label = rng.integers(0, n_clusters, stop - start)
        for s in range(0, stop - start, 100_000):
            e = min(stop - start, s + 100_000)
            x = centers[label[s:e]] + 0.5 * rng.normal(size=(e - s, dim)).astype(np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        pd.DataFrame({"image_path": [f"img/{i:09d}.jpg" for i in range(start, stop)], "cluster": label}).to_parquet(
            root / "metadata" / f"metadata_{part}.parquet")


def part_scale(args) -> dict:
    import json

    sizes = [int(v) for v in args.sizes.split(",")]
    rows = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"sp-bench-scale-{n}-", dir=args.workdir))
        t = time.perf_counter()
        write_clip_layout(work / "emb", n, args.dim)
        gen_s = time.perf_counter() - t
        sp_rss, out = run_child(CLI_TIMED.format(argv=[
            "semipairs", "curate", "--source", f"embeddings:{work / 'emb'}", "--store", str(work / "store"), "--name",
            "scale", "--k", str(args.k), "--recall-queries", str(args.recall_queries), "--json"]))
        wall = float(out.rsplit("WALL", 1)[1])
        result = json.loads(out.rsplit("WALL", 1)[0])
        ix = result["index"]
        raw_rss, raw_t = run_child(RAW_SCALE.format(root=str(work / "emb"), factory=ix["factory"], k=args.k,
                                                    nprobe=ix.get("nprobe") or 0, train=ix.get("train_size") or 0)) \
            if n <= args.raw_max else (float("nan"), float("nan"))
        shutil.rmtree(work, ignore_errors=True)
        raw = n <= args.raw_max
        row = {
            "n": n, "dim": args.dim, "k": args.k, "generate_seconds": round(gen_s, 1),
            "factory": ix["factory"], "nprobe": ix.get("nprobe"), "train_size": ix.get("train_size"),
            "index_bytes_per_vector": ix.get("bytes_per_vector"),
            "recall_at_10": ix.get("recall_at_k"), "recall_queries": ix.get("recall_queries"),
            "seconds": {"raw_faiss": round(float(raw_t), 1) if raw else None, "semipairs_curate": round(wall, 1),
                        "semipairs_stages": result.get("seconds")},
            "peak_rss_mb": {"raw_faiss": round(raw_rss) if raw else None, "semipairs_curate": round(sp_rss)},
            "peak_rss_bytes_per_vector": {"raw_faiss": round(raw_rss * 2**20 / n) if raw else None,
                                          "semipairs_curate": round(sp_rss * 2**20 / n)},
            "wall_time_ratio": round(wall / float(raw_t), 3) if raw else None,
            "peak_memory_ratio": round(sp_rss / raw_rss, 3) if raw else None,
            "pairs": result["stats"]["num_pairs"],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out:  # each size as it finishes: a long run that is cut off keeps what it measured
            emit({"benchmark": "curation.scale", "machine": machine(), "rows": rows}, args.out)
    return {"rows": rows, "targets": {"wall_time_ratio_max_at_1m": 1.2, "peak_memory_ratio_max": 1.5,
                                      "recall_at_10_min": 0.9, "peak_rss_per_vector": "does not grow with N"}}


def _subset_folder(work: Path, n: int) -> Path:
    full = extract_cifar("train", work)
    sub = work / f"train-{n}"
    files = sorted(full.rglob("*.jpg"))
    step = max(1, len(files) // n)
    for f in files[::step][:n]:
        (sub / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.parent.name / f.name)
    return sub


def part_embed(args) -> dict:
    import torch

    from curation.embed import embed_source
    from curation.encoders import load_encoder
    from semipairs.sources import open_source

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sp-bench-embed-"))
    src = open_source(f"imagefolder:{_subset_folder(work, args.images)}")
    args.image_size = args.image_size or 128
    enc = load_encoder(f"torchvision:{args.model}", image_size=args.image_size)
    torch.manual_seed(0)

    tensors = [enc.transform(src.read(i).image()) for i in range(len(src))]

    def raw() -> None:
        with torch.inference_mode():
            for s in range(0, len(tensors), args.batch_size):
                torch.nn.functional.normalize(enc.model(torch.stack(tensors[s:s + args.batch_size])).flatten(1), dim=1)

    def ours(i: int) -> None:
        embed_source(src, enc, work / f"cache-{i}", batch_size=args.batch_size, num_workers=args.workers, progress=False)

    raw()  # warm-up
    t_raw, t_sp = [], []
    for i in range(args.repeat):
        t = time.perf_counter(); raw(); t_raw.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); ours(i); t_sp.append(time.perf_counter() - t)  # noqa: E702
    n = len(src)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "images": n, "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
        "num_workers": args.workers, "torch_threads": torch.get_num_threads(),
        "images_per_s": {"raw_forward_predecoded": round(n / min(t_raw), 1),
                         "semipairs_embed_from_jpeg": round(n / min(t_sp), 1)},
        "throughput_ratio": round(min(t_raw) / min(t_sp), 3), "target_min": 0.9,
    }


def part_quality(args) -> dict:
    from curation.embed import embed_source
    from curation.encoders import load_encoder
    from curation.index import IndexConfig, build_index, search
    from curation.mine import MiningConfig, mine
    from semipairs.sources import open_source

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sp-bench-quality-"))
    src = open_source(f"imagefolder:{extract_cifar('train', work)}")
    labels = np.asarray(src.labels())
    emb = embed_source(src, load_encoder(args.encoder, args.image_size), work / "cache", batch_size=512,
                       num_workers=args.workers, progress=True)
    index, _ = build_index(emb.vectors, IndexConfig())
    scores, ids = search(index, emb.vectors, args.k, 16384, progress=False)
    n = len(labels)

    def measure(cfg: MiningConfig) -> dict:
        p = mine(scores, ids, cfg).pairs
        same = labels[p["anchor"].to_numpy()] == labels[p["positive"].to_numpy()]
        return {"pairs": len(p), "coverage": round(p["anchor"].nunique() / n, 4),
                "precision": round(float(same.mean()) if len(p) else 0.0, 4)}

    base = dict(duplicate_threshold=None, symmetric_dedup=False, max_per_anchor=1)
    table = {"top1": measure(MiningConfig(k=1, **base)), "mutual": measure(MiningConfig(k=args.k, mutual=True, **base))}
    curve = {}
    for q in (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        curve[f"q{q:.1f}"] = measure(MiningConfig(k=args.k, mutual=True, min_score_quantile=q, **base))
    top1_curve = {f"q{q:.1f}": measure(MiningConfig(k=1, min_score_quantile=q, **base)) for q in (0.5, 0.6, 0.7, 0.8)}

    def at_coverage(c: dict, target: float) -> dict:
        return min(c.values(), key=lambda r: abs(r["coverage"] - target))

    near30 = at_coverage(curve, 0.30)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "source": "CIFAR-10 train (50,000 JPEGs)", "encoder": args.encoder, "k": args.k,
        "coverage_definition": "share of images that anchor a kept pair (no symmetric de-dup)",
        "table": table, "mutual_threshold_curve": curve, "top1_threshold_curve": top1_curve,
        "at_30pct_coverage": {"mutual+threshold": near30, "top1+threshold": at_coverage(top1_curve, 0.30)},
        "precision_gain_points_vs_plain_top1": round(100 * (near30["precision"] - table["top1"]["precision"]), 1),
        "target_gain_points": 10,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["mining", "embed", "quality", "command", "scale"], required=True)
    ap.add_argument("--sizes", default="100000,1000000,4000000", help="scale: N values, comma-separated")
    ap.add_argument("--recall-queries", type=int, default=10_000, help="scale: queries for recall@10 vs exact")
    ap.add_argument("--raw-max", type=int, default=10**9, help="scale: run raw faiss only up to this N (it takes as "
                    "long as the command)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=None, help="vector dimension (mining: 512, scale: 256)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=None, help="encoder input size (embed part: 128 if unset)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encoder", default="pixels")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep extracted images here between runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.dim = args.dim or (256 if args.part == "scale" else 512)
    result = {"benchmark": f"curation.{args.part}", "machine": machine(),
              **{"mining": part_mining, "embed": part_embed, "quality": part_quality, "command": part_command,
                                                          "scale": part_scale}[args.part](args)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
