"""How honest is `semipairs review`'s estimate, and how many judgments does a +-5 point interval cost?

Pairs are built from the real CIFAR-10 test labels (10,000 images) at a set precision, right pairs scoring
higher on average (as mined pairs do); a simulated reviewer answers along the page's stratified order,
either from the labels or wrong 10% of the time (with one pair in ten, or one in four, asked again, which
the estimate corrects for). Over seeded repetitions: the share of 95% intervals that hold the true label
precision, and the mean interval half-width, per number of judgments.

    python bench/review.py --reps 400 --out docs/results/review-estimator.json
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from bench._common import CIFAR, emit  # noqa: E402
from semipairs.review import estimate_scores, simulated_review  # noqa: E402


def cifar_label_pairs(precision: float, n_pairs: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, right) of pairs over the CIFAR-10 test labels at ``precision``; right pairs score ~N(0.75, 0.08),
    wrong ones ~N(0.6, 0.08)."""
    with tarfile.open(CIFAR / "cifar10-test.tar") as tar:
        labels = np.array([m.name.split("/")[1] for m in tar if m.name.endswith(".jpg")])
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(labels), n_pairs)
    want = rng.random(n_pairs) < precision
    same_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    other = {c: np.flatnonzero(labels != c) for c in np.unique(labels)}
    b = np.array([rng.choice(same_class[labels[i]] if w else other[labels[i]]) for i, w in zip(a, want)])
    right = labels[a] == labels[b]
    return rng.normal(np.where(right, 0.75, 0.6), 0.08), right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="0.3,0.6,0.75,0.9,0.97")
    ap.add_argument("--judgments", default="50,100,200,400,800")
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    reviewers = {"labels": (0.0, 0), "errs 10%, 1 in 10 asked again": (0.1, 10), "errs 10%, 1 in 4 asked again": (0.1, 4),
                 "errs 10%, no repeats": (0.1, 0)}
    rows = []
    for prec in [float(p) for p in args.precisions.split(",")]:
        scores, right = cifar_label_pairs(prec)
        true = float(right.mean())
        for name, (error, every) in reviewers.items():
            for n in [int(x) for x in args.judgments.split(",")]:
                hits, half = 0, []
                for seed in range(args.reps):
                    est = estimate_scores(scores, [simulated_review(scores, right, n, seed, error, every)])
                    hits += est.low <= true <= est.high
                    half.append((est.high - est.low) / 2)
                rows.append({"true_precision": round(true, 4), "reviewer": name, "judgments": n,
                             "coverage": round(hits / args.reps, 4),
                             "mean_half_width_points": round(100 * float(np.mean(half)), 2)})
                print(rows[-1], flush=True)
    to5 = {}
    for r in rows:
        if r["mean_half_width_points"] <= 5:
            key = f"{r['true_precision']} / {r['reviewer']}"
            to5[key] = min(to5.get(key, 10**9), r["judgments"])
    emit({"benchmark": "review.estimator", "reps": args.reps, "pairs": 5000, "rows": rows,
          "judgments_for_half_width_5_points": to5}, args.out)


if __name__ == "__main__":
    main()
