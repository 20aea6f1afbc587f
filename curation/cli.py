"""The ``curate`` command, registered on the ``semipairs`` app; heavy imports happen when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from curation.config import CurateConfig, MiningConfig, QuickstartConfig
from semipairs.config import config_option, flags, load_config, option

EXAMPLE = (
    "Example: semipairs curate --source imagefolder:photos --encoder open_clip:ViT-B-32/laion2b_s34b_b79k "
    "--store store --name photo-pairs --k 10 --mutual --min-score 0.5.  From clip-retrieval's embeddings: "
    "semipairs curate --source 'embeddings:emb#key=url' --store store --name web-pairs --index-budget-gb 4"
)


def curate_command(
    source: str | None = option(CurateConfig, "source"),
    encoder: str | None = option(CurateConfig, "encoder"),
    agree_with: str | None = option(CurateConfig, "agree_with"),
    store: Path | None = option(CurateConfig, "store"),
    name: str | None = option(CurateConfig, "name"),
    version: str | None = option(CurateConfig, "version"),
    k: int | None = option(MiningConfig, "k"),
    min_score: float | None = option(MiningConfig, "min_score"),
    min_score_quantile: float | None = option(MiningConfig, "min_score_quantile"),
    mutual: bool | None = option(MiningConfig, "mutual", "--mutual/--no-mutual"),
    max_per_anchor: int | None = option(MiningConfig, "max_per_anchor"),
    duplicate_threshold: float | None = option(MiningConfig, "duplicate_threshold"),
    csls: bool | None = option(MiningConfig, "csls", "--csls/--no-csls"),
    metric: str | None = option(CurateConfig, "metric"),
    layout: str | None = option(CurateConfig, "layout"),
    embeddings: Path | None = option(CurateConfig, "embeddings"),
    image_size: int | None = option(CurateConfig, "image_size"),
    batch_size: int | None = option(CurateConfig, "batch_size"),
    num_workers: int | None = option(CurateConfig, "num_workers"),
    dtype: str | None = option(CurateConfig, "dtype"),
    precision: str | None = option(CurateConfig, "precision"),
    index: str | None = option(CurateConfig, "index"),
    nprobe: int | None = option(CurateConfig, "nprobe"),
    exact_max: int | None = option(CurateConfig, "exact_max"),
    index_budget_gb: float | None = option(CurateConfig, "index_budget_gb"),
    recall_queries: int | None = option(CurateConfig, "recall_queries"),
    key_column: str | None = option(CurateConfig, "key_column"),
    label_column: str | None = option(CurateConfig, "label_column"),
    seed: int | None = option(MiningConfig, "seed"),
    config: Path | None = config_option(" (mining keys at the top level or under mining:)"),
    as_json: bool = typer.Option(False, "--json", help="Print the published path and stats as JSON."),
) -> None:
    """Mine semantic positive pairs from an image collection and publish them as a pair dataset."""
    cfg = CurateConfig.from_sources(config, flags(locals()))
    from curation.pipeline import curate
    from semipairs.console import out

    result = curate(cfg, progress=not as_json)
    if result.path is None:  # a non-zero torchrun rank
        return
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    s = result.stats
    _near_duplicate_note(result.counts, s, cfg.mining.duplicate_threshold)
    prec = "" if s["label_precision"] is None else f", label precision {s['label_precision']:.1%}"
    out.print(f"published {result.path}: {s['num_pairs']} pairs, coverage {s['coverage']:.1%}{prec}", soft_wrap=True,
              highlight=False)
    ix = result.index
    q = ix.get("recall_queries")
    out.print(f"index {ix['factory']} ({ix.get('bytes_per_vector', 0):.0f} B/vector), recall@{ix.get('recall_k')} "
              f"{ix.get('recall_at_k', float('nan')):.3f}" + (f" on {q} sampled queries" if q else " (exact search)"),
              soft_wrap=True, highlight=False, markup=False)
    data = cfg.source if not cfg.source.startswith("embeddings:") else "YOUR_IMAGE_SOURCE"
    out.print(f"next: semipairs audit {result.path}   |   semipairs train --data {data} --pairs {result.path} "
              "--out runs/with-pairs", soft_wrap=True, highlight=False, markup=False)


def _near_duplicate_note(counts: dict[str, int], stats: dict, threshold: float | None) -> None:
    """Say so when the near-duplicate filter took a visible share: with a trained checkpoint's features (post-ReLU,
    cosine 0.8-1.0) the best real pairs score above 0.98 too, and only the user can tell them from copies."""
    from semipairs.console import note

    dropped, seen = counts.get("near_duplicates", 0), counts.get("candidates", 0)
    if seen and dropped / seen > 0.005:
        q = stats.get("score_quantiles", {})
        note(f"{dropped} candidate pairs ({dropped / seen:.1%}) scored at or above --duplicate-threshold {threshold} and "
             f"were dropped as near-duplicates (kept pairs score {q.get('min', 0):.2f}-{q.get('max', 0):.2f}); if they "
             "are not copies, raise --duplicate-threshold (e.g. 0.999)")


def audit_command(
    path: str = typer.Argument(..., help="A version directory or STORE/NAME (newest version)."),
    labels_from: str | None = typer.Option(None, help="Labelled source holding the pairs' keys (else the table's labels)."),
    out: Path | None = typer.Option(None, help="Output directory (default: ./audit-NAME-VERSION)."),
    version: str | None = typer.Option(None, help="Version under STORE/NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Audit pair quality: metrics.json, score / precision-coverage / hubness plots, pair grids, report.html."""
    from curation.audit import audit
    from semipairs.console import err
    from semipairs.console import out as console
    from semipairs.dataset import load

    ds = load(path, version)
    target = out or Path(f"audit-{ds.manifest.name}-{ds.manifest.version}")
    result = audit(ds, target, labels_from=labels_from)
    if as_json:
        sys.stdout.write(json.dumps(result.metrics, indent=1) + "\n")
        return
    if result.metrics["labels"] is None:
        err.print("no labels in the pairs and no --labels-from: unsupervised part only")
    console.print(result.summary_markdown())
    console.print(f"report: {result.out / 'report.html'}")


def quickstart_command(
    out: Path | None = option(QuickstartConfig, "out"),
    source: str | None = option(QuickstartConfig, "source"),
    method: str | None = option(QuickstartConfig, "method"),
    steps: int | None = option(QuickstartConfig, "steps"),
    image_size: int | None = option(QuickstartConfig, "image_size"),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Offline tour: pretrain MoCo-v2, curate pairs with it, audit, retrain with the pairs, compare kNN top-1."""
    cfg = load_config(QuickstartConfig, config, flags(locals()))
    from rich.table import Table

    from curation.quickstart import run_quickstart
    from semipairs.console import note
    from semipairs.console import out as console

    result = run_quickstart(cfg.out, source=cfg.source, steps=cfg.steps, image_size=cfg.image_size, method=cfg.method,
                            progress=not as_json, log=(lambda _: None) if as_json else note)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    t = Table(title=f"semipairs quickstart on {result['source']} ({result['steps_per_run']} steps per run)")
    for col in ("run", "pairs", "pair precision", "coverage", "kNN top-1 (held-out fifth)"):
        t.add_column(col)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    for r in result["rows"]:
        knn = "-" if r["knn_top1"] is None else f"{r['knn_top1']:.1f}%"
        t.add_row(r["run"], "-" if r["pairs"] is None else str(r["pairs"]), pct(r["label_precision"]), pct(r["coverage"]), knn)
    console.print(t)
    console.print(f"pair dataset: {result['dataset']}\naudit report: {result['audit']}\n"
              f"runs: {Path(result['out']) / 'runs'}   ({result['seconds']:.0f} s)", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("curate", epilog=EXAMPLE)(curate_command)
    app.command("audit", epilog="Example: semipairs audit store/photo-pairs --labels-from imagefolder:photos --out audit")(
        audit_command)
    app.command("quickstart", epilog="Example: semipairs quickstart --out /tmp/sp   (or --source imagefolder:photos for "
                "your images)")(quickstart_command)
