"""The ``curate`` command, registered on the ``semipairs`` app; heavy imports happen when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

EXAMPLE = (
    "Example: semipairs curate --source imagefolder:photos --encoder open_clip:ViT-B-32/laion2b_s34b_b79k "
    "--store store --name photo-pairs --k 10 --mutual --min-score 0.5.  From clip-retrieval's embeddings: "
    "semipairs curate --source 'embeddings:emb#key=url' --store store --name web-pairs --index-budget-gb 4"
)


def curate_command(
    source: str | None = typer.Option(None, help="Image source: imagefolder:DIR, webdataset:PATTERN, digits, "
                                       "cifar10:ROOT, hf:OWNER/NAME[@REV][:SPLIT], or embeddings:DIR[#key=COLUMN,"
                                       "label=COLUMN] (clip-retrieval's img_emb/ + metadata/ folders; keys from "
                                       "image_path by default; publishes the reference layout, reads no image)."),
    encoder: str | None = typer.Option(None, help="open_clip:MODEL[/TAG|FILE], timm:NAME[/FILE], "
                                                  "torchvision:NAME[/W|FILE|random], ckpt:PATH or pixels[:SIZE]. "
                                                  "Default: pixels (the image downsampled to "
                                                  "16x16, mean removed: a no-model baseline; use a real encoder for "
                                                  "semantic pairs)."),
    store: Path | None = typer.Option(None, help="Store root; the version lands in STORE/NAME/VERSION."),
    name: str | None = typer.Option(None, help="Dataset name."),
    version: str | None = typer.Option(None, help="Semver version (default 1.0.0)."),
    k: int | None = typer.Option(None, help="Neighbours considered per image (default 10)."),
    min_score: float | None = typer.Option(None, help="Absolute similarity threshold."),
    min_score_quantile: float | None = typer.Option(None, help="Threshold at this quantile of candidate scores."),
    mutual: bool | None = typer.Option(None, "--mutual/--no-mutual", help="Keep only mutual nearest neighbours."),
    max_per_anchor: int | None = typer.Option(None, help="Pairs kept per anchor (default 1)."),
    duplicate_threshold: float | None = typer.Option(None, help="Scores at or above are near-duplicates (default 0.98)."),
    csls: bool | None = typer.Option(None, "--csls/--no-csls", help="CSLS hubness correction."),
    metric: str | None = typer.Option(None, help="cosine or l2."),
    layout: str | None = typer.Option(None, help="embedded or reference."),
    embeddings: Path | None = typer.Option(None, help="Precomputed .npy embeddings in source order (skips the encoder)."),
    image_size: int | None = typer.Option(None, help="Encoder input size override."),
    batch_size: int | None = typer.Option(None, help="Embedding batch size (default 256)."),
    num_workers: int | None = typer.Option(None, help="DataLoader decode workers (default 2)."),
    dtype: str | None = typer.Option(None, help="Cache dtype: float32 or float16."),
    precision: str | None = typer.Option(None, help="auto (bf16 autocast + channels_last where the CPU has avx512_bf16/"
                                         "AMX or on CUDA, else fp32), fp32 or bf16."),
    index: str | None = typer.Option(None, help="faiss index_factory string (e.g. 'IVF4096,Flat', 'OPQ32,IVF4096,PQ32'). "
                                     "Default: Flat up to --exact-max vectors, IVF,Flat while float32 vectors fit "
                                     "--index-budget-gb, IVF,PQ above."),
    nprobe: int | None = typer.Option(None, help="IVF lists visited per query (default 16)."),
    exact_max: int | None = typer.Option(None, help="Exact search up to this many vectors (default 200000)."),
    index_budget_gb: float | None = typer.Option(None, help="Memory the index may take (default a quarter of RAM)."),
    recall_queries: int | None = typer.Option(None, help="Queries sampled to measure recall@k against exact search "
                                              "(default 1000; recorded in the manifest's index block)."),
    key_column: str | None = typer.Option(None, help="embeddings:DIR: the metadata column holding keys "
                                          "(default image_path; same as #key=COLUMN)."),
    label_column: str | None = typer.Option(None, help="embeddings:DIR: a metadata column holding labels "
                                            "(same as #label=COLUMN)."),
    seed: int | None = typer.Option(None, help="Seed (IVF training sample, recall sample)."),
    config: Path | None = typer.Option(None, help="YAML config; flags override its keys."),
    as_json: bool = typer.Option(False, "--json", help="Print the published path and stats as JSON."),
) -> None:
    """Mine semantic positive pairs from an image collection and publish them as a pair dataset."""
    from curation.pipeline import CurateConfig, curate
    from semipairs.console import out

    overrides = dict(source=source, encoder=encoder, store=store, name=name, version=version, k=k, min_score=min_score,
                     min_score_quantile=min_score_quantile, mutual=mutual, max_per_anchor=max_per_anchor,
                     duplicate_threshold=duplicate_threshold, csls=csls, metric=metric, layout=layout, embeddings=embeddings,
                     image_size=image_size, batch_size=batch_size, num_workers=num_workers, dtype=dtype, precision=precision,
                     index=index, nprobe=nprobe, exact_max=exact_max, index_budget_gb=index_budget_gb,
                     recall_queries=recall_queries, key_column=key_column, label_column=label_column, seed=seed)
    cfg = CurateConfig.from_sources(config, overrides)
    result = curate(cfg, progress=not as_json)
    if result.path is None:  # a non-zero torchrun rank
        return
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    s = result.stats
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
    out_dir: Path = typer.Option(Path("semipairs-quickstart"), "--out", help="Where the store, runs and audit go."),
    source: str = typer.Option("digits", help="Labelled image source (default: scikit-learn's bundled digits, offline)."),
    steps: int = typer.Option(150, min=1, help="Optimizer steps of each of the two training runs."),
    image_size: int = typer.Option(16, min=8, help="Training input size (digits are 8 px, upsampled)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Offline tour: pretrain MoCo-v2, curate pairs with it, audit, retrain with the pairs, compare kNN top-1."""
    from rich.table import Table

    from curation.quickstart import run_quickstart
    from semipairs.console import note, out

    result = run_quickstart(out_dir, source=source, steps=steps, image_size=image_size, progress=not as_json,
                            log=(lambda _: None) if as_json else note)
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
    out.print(t)
    out.print(f"pair dataset: {result['dataset']}\naudit report: {result['audit']}\n"
              f"runs: {Path(result['out']) / 'runs'}   ({result['seconds']:.0f} s)", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("curate", epilog=EXAMPLE)(curate_command)
    app.command("audit", epilog="Example: semipairs audit store/photo-pairs --labels-from imagefolder:photos --out audit")(
        audit_command)
    app.command("quickstart", epilog="Example: semipairs quickstart --out /tmp/sp   (or --source imagefolder:photos for "
                "your images)")(quickstart_command)
