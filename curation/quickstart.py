"""``semipairs quickstart``: the whole story, offline, on scikit-learn's digits (or ``--source``).

pretrain a small MoCo-v2 (or ``--method simclr`` / ``simsiam``) -> curate semantic pairs with it
(``ckpt:``) -> audit them against the labels -> train again with the pairs under the same step budget ->
kNN top-1 of both on a held-out fifth of the images -> one table. About 2-3 minutes on a 2-core CPU with
the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from curation.mine import MiningConfig
from curation.pipeline import CurateConfig, curate
from semipairs.dataset import list_versions
from semipairs.errors import StoreError
from semipairs.sources import open_source
from semipairs.verify import verify_version


def next_version(dataset_dir: Path) -> str:
    """1.0.0 for a new dataset, else the newest version with its patch number raised."""
    versions = list_versions(dataset_dir)
    if not versions:
        return "1.0.0"
    major, minor, patch = versions[-1].split("-")[0].split("+")[0].split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


def _knn_heldout(checkpoint: Path, source_spec: str, num_workers: int) -> float | None:
    """kNN top-1 (k=200, T=0.07) on every 5th image, the other four fifths as the memory bank."""
    from semipairs.checkpoint import load_backbone
    from training.evaluate import extract_features, knn_top1

    src = open_source(source_spec)
    if not src.has_labels:
        return None
    model, spec, _ = load_backbone(checkpoint)
    feats, labels = extract_features(model, src, spec.image_size, num_workers=num_workers)
    test = np.arange(len(labels)) % 5 == 0
    return knn_top1(feats[~test], labels[~test], feats[test], labels[test])


METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo-v2", "simsiam": "SimSiam"}


def run_quickstart(out: Path, source: str = "digits", steps: int = 150, batch_size: int = 64, image_size: int = 16,
                   num_workers: int = 0, progress: bool = True, log: Callable[[str], None] = lambda _: None,
                   method: str = "moco") -> dict[str, Any]:
    """The five stages, each announced through ``log`` (the CLI prints it; the library never does)."""
    from training.trainer import TrainConfig, train

    out = Path(out)
    store, t0 = out / "store", time.perf_counter()

    def stage(i: int, text: str) -> None:
        log(f"[{i}/5] {text}  ({time.perf_counter() - t0:.0f} s so far)")

    def train_run(name: str, pairs: str | None) -> Path:
        run = out / "runs" / name
        cfg = TrainConfig(method=method, data=source, out=run, pairs=pairs, epochs=10_000, max_steps=steps,
                          batch_size=batch_size, image_size=image_size, queue_size=1024, num_workers=num_workers,
                          seed=0, resume=False)
        train(cfg, progress=progress, log=log)
        return run / "checkpoint.pt"

    open_source(source)  # a bad source fails here, before any stage starts
    name_of = METHOD_NAMES[method]
    stage(1, f"pretrain {name_of} on {source}: {steps} steps of batch {batch_size}")
    baseline = train_run("baseline", None)
    stage(2, "curate semantic pairs with that checkpoint (ckpt: encoder, mutual kNN) and audit them")
    name = "quickstart-pairs"
    cur = curate(CurateConfig(source=source, encoder=f"ckpt:{baseline}", store=store, name=name,
                              version=next_version(store / name), num_workers=num_workers, cache_dir=out / "cache",
                              mining=MiningConfig(k=10, mutual=True, min_score_quantile=0.3)), progress=progress)
    assert cur.path is not None
    report = verify_version(cur.path)
    if not report.ok:
        raise StoreError(f"{cur.path}: published but does not verify: {report.problems[0]}")
    stage(3, f"train {name_of} again with the {cur.stats['num_pairs']} pairs: {steps} steps")
    with_pairs = train_run("with-pairs", str(cur.path))
    stage(4, "kNN top-1 of both runs on a held-out fifth")
    s = cur.stats
    rows = [
        {"run": name_of, "pairs": None, "label_precision": None, "coverage": None,
         "knn_top1": _knn_heldout(baseline, source, num_workers), "checkpoint": str(baseline)},
        {"run": f"{name_of} + semantic pairs", "pairs": s["num_pairs"], "label_precision": s["label_precision"],
         "coverage": s["coverage"], "knn_top1": _knn_heldout(with_pairs, source, num_workers), "checkpoint": str(with_pairs)},
    ]
    stage(5, "done")
    return {"out": str(out), "source": source, "steps_per_run": steps, "dataset": str(cur.path),
            "audit": str(cur.path / "audit" / "report.html"), "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
