"""``semipairs quickstart``: the offline tour on scikit-learn's digits (or ``--source``).

Mines semantic pairs with the ``pixels`` baseline twice (plain top-1, and mutual kNN + score
threshold), publishes both, verifies them and reports label precision and coverage side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.mine import MiningConfig
from curation.pipeline import CurateConfig, curate
from semipairs.dataset import list_versions
from semipairs.errors import StoreError
from semipairs.verify import verify_version

RECIPES: dict[str, MiningConfig] = {
    "top1": MiningConfig(k=1, duplicate_threshold=None),
    "mutual+threshold": MiningConfig(k=10, mutual=True, min_score_quantile=0.5),
}


def next_version(dataset_dir: Path) -> str:
    """1.0.0 for a new dataset, else the newest version with its patch number raised."""
    versions = list_versions(dataset_dir)
    if not versions:
        return "1.0.0"
    major, minor, patch = versions[-1].split("-")[0].split("+")[0].split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


def run_quickstart(out: Path, source: str = "digits", encoder: str = "pixels", progress: bool = True) -> dict[str, Any]:
    store = Path(out) / "store"
    rows = []
    for recipe, mining in RECIPES.items():
        name = f"quickstart-{recipe.replace('+', '-')}"
        cfg = CurateConfig(source=source, encoder=encoder, store=store, name=name, version=next_version(store / name),
                           mining=mining, num_workers=0, cache_dir=Path(out) / "cache")
        result = curate(cfg, progress=progress)
        assert result.path is not None
        report = verify_version(result.path)
        if not report.ok:
            raise StoreError(f"{result.path}: published but does not verify: {report.problems[0]}")
        rows.append({"recipe": recipe, "encoder": encoder, "path": str(result.path), **{
            k: result.stats[k] for k in ("num_pairs", "coverage", "label_precision")}})
    return {"out": str(out), "source": source, "rows": rows}
