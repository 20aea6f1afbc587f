"""Curation benchmarks (JSON). Three parts, each against a reference in the same run:

- mining: N x d precomputed embeddings -> pairs (load, checks, normalise, faiss index, batched search,
  mining) vs raw ``faiss.IndexFlatIP`` add + search of the same matrix; wall time and peak RSS, each
  side in its own fresh process.
- embed: the embedding stage (DataLoader decoding JPEGs in workers, encoder, chunked cache) vs the same
  model's forward over pre-decoded tensors.
- quality: precision / coverage of pairs mined on CIFAR-10 train with an offline encoder: plain top-1,
  mutual, mutual + threshold (a curve), and top-1 + threshold for reference.

    python bench/curation.py --part mining --n 100000 --dim 512
    python bench/curation.py --part embed --images 2048 --image-size 128
    python bench/curation.py --part quality --encoder pixels
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
from curation.vectors import load_embeddings, check_finite, normalise_
from curation.pipeline import mine_embeddings
from curation.mine import MiningConfig
class Rows:  # stands in for a source: only its length and name are needed
    spec = "bench"
    def __len__(self): return {n}
t = time.perf_counter()
emb = load_embeddings({path!r}, Rows())
check_finite(emb, [str(i) for i in range({n})], "bench")
normalise_(emb.vectors)
res, info = mine_embeddings(emb.vectors, "cosine", MiningConfig(k={k}, mutual=True), progress=False)
print(time.perf_counter() - t)
"""


def part_mining(args) -> dict:
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="sp-bench-mine-"))
    centers = rng.normal(size=(1000, args.dim)).astype(np.float32)
    x = centers[rng.integers(0, 1000, args.n)] + 0.5 * rng.normal(size=(args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(work / "emb.npy", x)
    del x, centers
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
    ap.add_argument("--part", choices=["mining", "embed", "quality"], required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
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
    result = {"benchmark": f"curation.{args.part}", "machine": machine(),
              **{"mining": part_mining, "embed": part_embed, "quality": part_quality}[args.part](args)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
