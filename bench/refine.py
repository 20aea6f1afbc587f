"""GNN refinement benchmarks (JSON).

- scale: one refinement epoch (two kNN graphs with k=10, BYOL mini-batches, layer-wise inference of every
  node) on N synthetic clustered 512-d embeddings, for two sizes, each in a fresh process; wall time and
  peak RSS, against a raw reference in the same run (a process that holds the same two matrices and runs
  the bare faiss kNN search the graphs need). Memory above the reference should grow linearly in N.
- quality: a trained checkpoint on CIFAR-10 (bench/quality.py's baseline) -> `refine` -> kNN top-1 of raw
  vs refined embeddings on the test split, and precision of mutual top-1 pairs mined on raw vs refined
  embeddings at equal coverage (score thresholds chosen per embedding to hit each coverage).

    python bench/refine.py --part scale --sizes 25000,50000
    python bench/refine.py --part quality --checkpoint /tmp/sp-quality/seed0/baseline/checkpoint.pt
    python bench/refine.py --part quality --checkpoint QS/runs/baseline/checkpoint.pt --epochs 10 --batch-size 128 \
        --data imagefolder:digits/train --eval-data imagefolder:digits/test --out bench/out/refine-quality-digits.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, extract_cifar, machine, run_child  # noqa: E402

DATA = """
import numpy as np
rng = np.random.default_rng(0)
n, d = {n}, 512
centers = rng.normal(size=(500, d)).astype(np.float32)
s = centers[rng.integers(0, 500, n)] + 0.7 * rng.normal(size=(n, d)).astype(np.float32)
t = s + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
s /= np.linalg.norm(s, axis=1, keepdims=True); t /= np.linalg.norm(t, axis=1, keepdims=True)
"""

RAW = DATA + """
import time, faiss
t0 = time.perf_counter()
for x in (s, t):
    index = faiss.IndexFlatIP(d); index.add(x); index.search(x, {k} + 1); del index
print(time.perf_counter() - t0)
"""

SP = DATA + """
import time, torch
from pathlib import Path
from training.graphs import build_knn_graph
from training.refine import RefineConfig, train_gnn, refined_embeddings
torch.set_num_threads({threads})
t0 = time.perf_counter()
x = {{"student": torch.from_numpy(s), "teacher": torch.from_numpy(t)}}
graphs = {{v: build_knn_graph(x[v], {k}) for v in x}}
t1 = time.perf_counter()
cfg = RefineConfig(checkpoint=Path("-"), data="-", out=Path("-"), epochs=1, k={k})
online, losses = train_gnn(x, graphs, cfg)
t2 = time.perf_counter()
r = refined_embeddings(online, x, graphs)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, sum(g.num_edges for g in graphs.values()), losses[0])
"""


def part_scale(args) -> dict:
    import torch

    rows = {}
    for n in (int(v) for v in args.sizes.split(",")):
        raw_rss, raw_t = run_child(RAW.format(n=n, k=args.k))
        sp_rss, out = run_child(SP.format(n=n, k=args.k, threads=torch.get_num_threads()))
        graph_s, epoch_s, infer_s, edges, loss = (float(v) for v in out.split())
        rows[n] = {"graph_build_s": round(graph_s, 1), "train_epoch_s": round(epoch_s, 1), "inference_s": round(infer_s, 1),
                   "total_s": round(graph_s + epoch_s + infer_s, 1), "raw_knn_search_s": round(float(raw_t), 1),
                   "edges_both_graphs": int(edges), "first_epoch_loss": round(loss, 4),
                   "peak_rss_mb": round(sp_rss), "raw_reference_peak_rss_mb": round(raw_rss),
                   "peak_memory_ratio": round(sp_rss / raw_rss, 3), "overhead_mb": round(sp_rss - raw_rss)}
    sizes = sorted(rows)
    growth = None
    if len(sizes) >= 2:
        a, b = rows[sizes[0]], rows[sizes[-1]]
        growth = {"n_ratio": round(sizes[-1] / sizes[0], 2),
                  "overhead_mb_ratio": round(b["overhead_mb"] / max(a["overhead_mb"], 1), 2),
                  "peak_rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
                  "epoch_time_ratio": round(b["train_epoch_s"] / a["train_epoch_s"], 2)}
    return {"k": args.k, "dim": 512, "sizes": rows, "growth": growth}


def _precision_at_coverage(x: np.ndarray, labels: np.ndarray, coverages: list[float]) -> dict:
    """Mutual top-1 pairs, then the score threshold that keeps each coverage of anchors; label precision."""
    from curation.mine import MiningConfig
    from curation.pipeline import mine_embeddings

    cfg = MiningConfig(k=10, mutual=True, duplicate_threshold=None)
    res, _ = mine_embeddings(np.ascontiguousarray(x, np.float32), "cosine", cfg, progress=False)
    p = res.pairs
    top1 = p[p["rank"] == 1].sort_values("score", ascending=False)
    same = labels[top1["anchor"].to_numpy()] == labels[top1["positive"].to_numpy()]
    out = {"mutual_top1_coverage": round(len(top1) / len(x), 4), "mutual_top1_precision": round(float(same.mean()), 4)}
    for c in coverages:
        m = int(c * len(x))
        out[f"precision_at_{c:.0%}"] = round(float(same[:m].mean()), 4) if m <= len(top1) else None
    return out


def part_quality(args) -> dict:
    from training.refine import RefineConfig, refine

    work = Path(args.workdir)
    train_src = args.data or f"imagefolder:{work / f'train-{args.train_images}'}"
    eval_src = args.eval_data or f"imagefolder:{extract_cifar('test', work)}"
    cfg = RefineConfig(checkpoint=Path(args.checkpoint), data=train_src, eval_data=eval_src, out=work / f"refined-{args.conv}",
                       k=args.k, epochs=args.epochs, conv=args.conv, num_workers=args.workers, batch_size=args.batch_size)
    report = refine(cfg, progress=False)
    from semipairs.sources import open_source

    labels = np.asarray(open_source(train_src).labels())
    coverages = [0.1, 0.2, 0.3]
    return {"checkpoint": args.checkpoint, "data": train_src, "eval_data": eval_src, "k": args.k, "conv": args.conv,
            "epochs": args.epochs,
            "knn_top1": report["knn_top1"], "losses": report["losses"], "seconds": report["seconds"],
            "pairs_raw": _precision_at_coverage(np.load(cfg.out / "raw.npy"), labels, coverages),
            "pairs_refined": _precision_at_coverage(np.load(cfg.out / "refined.npy"), labels, coverages)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["scale", "quality"], default="scale")
    ap.add_argument("--sizes", default="25000,50000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--checkpoint", default="/tmp/sp-quality/seed0/baseline/checkpoint.pt")
    ap.add_argument("--data", default=None, help="training source (default: bench/quality.py's 20,000-image subset)")
    ap.add_argument("--eval-data", default=None, help="held-out source (default: the CIFAR-10 test split)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--train-images", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/sp-quality")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--conv", default="sage")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = {"machine": machine(), "part": args.part}
    result |= part_scale(args) if args.part == "scale" else part_quality(args)
    emit(result, args.out or f"bench/out/refine-{args.part}.json")


if __name__ == "__main__":
    main()
