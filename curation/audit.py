"""Pair-quality audit: metrics, plots, image grids and one self-contained HTML page.

Without labels it reports what can be judged unsupervised (score distribution, hubness, near-duplicates,
mutual share) and says so; with labels (from the table, or ``labels_from`` a source) it adds precision
overall and per class, the precision-coverage curve over score thresholds and the class confusion of
wrong pairs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from semipairs.atomic import write_bytes, write_text
from semipairs.dataset import PairDataset
from semipairs.errors import SemipairsError
from semipairs.sources import open_source
from semipairs.sources.base import ImageSource, thumbnail
from semipairs.table import score_quantiles

NEAR_DUPLICATE = 0.98
CURVE_POINTS = 20


class AuditError(SemipairsError):
    """Labels that do not match the pairs, or an unreadable dataset."""


@dataclass
class AuditResult:
    out: Path
    metrics: dict[str, Any]
    files: list[str]

    def summary_markdown(self) -> str:
        m = self.metrics
        lines = [f"- pairs: {m['num_pairs']}, coverage {m['coverage']:.1%}, mutual share {m['unsupervised']['mutual_share']:.1%}",
                 f"- hubness: in-degree skew {m['unsupervised']['hub_skew']:.2f}, top hub used "
                 f"{m['unsupervised']['top_hubs'][0]['count'] if m['unsupervised']['top_hubs'] else 0} times",
                 f"- near-duplicates (score >= {NEAR_DUPLICATE}): {m['unsupervised']['near_duplicates']}"]
        if m.get("labels"):
            lab = m["labels"]
            lines.insert(0, f"- label precision: {lab['precision']:.1%} (labels from {lab['source']})")
        else:
            lines.append("- no labels: unsupervised signals only")
        return "\n".join(lines)


class Labels(NamedTuple):
    """Each pair's anchor and positive label, where they came from, and the class names when known."""

    anchor: pd.Series
    positive: pd.Series
    source: str
    classes: list[str] | None


def _resolve_source(ds: PairDataset, labels_from: str | ImageSource | None, own: ImageSource | None = None
                    ) -> ImageSource | None:
    """The one source an audit reads: ``labels_from`` (its errors are the user's to see), else the dataset's
    own source (``own`` when the caller has it open) when class names or reference-layout images need it
    and it can be opened here."""
    if labels_from is not None:
        return open_source(labels_from) if isinstance(labels_from, str) else labels_from
    if "anchor_label" not in ds.table and ds.manifest.layout != "reference":
        return None
    if own is not None:
        return own
    try:
        return open_source(ds.manifest.source.uri)
    except Exception:  # noqa: BLE001 - a source elsewhere, or gone: numbers for classes, no grids
        return None


def _labels_for(ds: PairDataset, src: ImageSource | None, explicit: bool) -> Labels | None:
    """Labels from ``src`` when the user named it, else from the table (class names from ``src``)."""
    t = ds.table
    if not explicit:
        if "anchor_label" in t:
            return Labels(t["anchor_label"], t["positive_label"], "pairs.parquet", src.classes if src is not None else None)
        return None
    assert src is not None
    if not src.has_labels:
        raise AuditError(f"{src.spec}: this source has no labels to audit against")
    lab = dict(zip(src.keys(), src.labels()))
    missing = sorted(set(t["anchor_key"]).union(t["positive_key"]) - lab.keys())
    if missing:
        raise AuditError(f"{src.spec}: {len(missing)} pair key(s) have no label there, e.g. {missing[:5]}; "
                         "the labels source must hold the pairs' keys")
    a = t["anchor_key"].map(lab).astype("Int32")
    p = t["positive_key"].map(lab).astype("Int32")
    return Labels(a, p, src.spec, src.classes)


def compute_metrics(table: pd.DataFrame, num_images: int, anchor_label: pd.Series | None = None,
                    positive_label: pd.Series | None = None, label_source: str = "", classes: list[str] | None = None,
                    mining_counts: dict | None = None) -> dict[str, Any]:
    """All audit numbers for a pair table; labels optional. Pure function, so it is tested on hand-made tables."""
    n = len(table)
    scores = table["score"].to_numpy(np.float64)
    finite = np.isfinite(scores)
    q = score_quantiles(scores, {"min": 0, "p05": .05, "p25": .25, "p50": .5, "p75": .75, "p95": .95, "max": 1})
    indeg = table["positive_key"].value_counts()
    counts = np.zeros(max(num_images, len(indeg)))
    counts[: len(indeg)] = indeg.to_numpy()
    sd = counts.std()
    skew = float(((counts - counts.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
    hist_counts, hist_edges = np.histogram(scores[finite], bins=30) if finite.any() else (np.array([]), np.array([]))
    metrics: dict[str, Any] = {
        "num_pairs": n, "num_images": num_images,
        "coverage": table["anchor_key"].nunique() / num_images if num_images else 0.0,
        "score_quantiles": q,
        "unsupervised": {
            "score_histogram": {"counts": hist_counts.tolist(), "edges": [round(e, 6) for e in hist_edges.tolist()]},
            "hub_skew": skew,
            "top_hubs": [{"key": k, "count": int(c)} for k, c in indeg.head(10).items()],
            "max_in_degree": int(indeg.max()) if n else 0,
            "near_duplicates": int((scores[finite] >= NEAR_DUPLICATE).sum()),
            "near_duplicates_removed_by_mining": int((mining_counts or {}).get("near_duplicates", 0)),
            "mutual_share": float(table["mutual"].mean()) if n else 0.0,
        },
        "labels": None,
    }
    if anchor_label is not None and positive_label is not None:
        metrics["labels"] = _label_metrics(table, num_images, anchor_label, positive_label, label_source, classes)
    return metrics


def _label_metrics(table: pd.DataFrame, num_images: int, anchor_label: pd.Series, positive_label: pd.Series,
                   label_source: str, classes: list[str] | None) -> dict[str, Any]:
    """Precision overall and per class, the precision-coverage curve as the threshold rises, confusions."""
    n = len(table)
    scores = table["score"].to_numpy(np.float64)
    finite = np.isfinite(scores)
    known = (anchor_label.notna() & positive_label.notna()).to_numpy()
    a = anchor_label.to_numpy(dtype=float, na_value=np.nan)
    p = positive_label.to_numpy(dtype=float, na_value=np.nan)
    same = (a == p) & known
    name = (lambda c: classes[int(c)]) if classes else (lambda c: str(int(c)))
    per_class = {}
    for c in np.unique(a[known]):
        sel = known & (a == c)
        per_class[name(c)] = {"pairs": int(sel.sum()), "precision": float(same[sel].mean())}
    order = np.argsort(-np.where(finite, scores, -np.inf), kind="stable")
    anchors = table["anchor_key"].to_numpy()
    curve = []
    for frac in np.linspace(1 / CURVE_POINTS, 1.0, CURVE_POINTS):
        top = order[: max(1, int(round(frac * n)))]
        top = top[known[top]]
        if not len(top):
            continue
        curve.append({"threshold": float(scores[top[-1]]) if finite[top[-1]] else None, "pairs": int(len(top)),
                      "coverage": float(pd.unique(anchors[top]).size / num_images) if num_images else 0.0,
                      "precision": float(same[top].mean())})
    wrong = known & ~same
    confusion = pd.crosstab(pd.Series(a[wrong]).map(name), pd.Series(p[wrong]).map(name)) if wrong.any() else pd.DataFrame()
    top_conf = confusion.stack().sort_values(ascending=False).head(10) if not confusion.empty else pd.Series(dtype=int)
    return {
        "source": label_source, "pairs_with_labels": int(known.sum()),
        "precision": float(same[known].mean()) if known.any() else 0.0,
        "per_class": per_class, "precision_coverage": curve,
        "wrong_pairs": int(wrong.sum()),
        "confusion": {str(r): {str(c): int(v) for c, v in row.items() if v} for r, row in confusion.iterrows()},
        "top_confusions": [{"anchor": str(r), "positive": str(c), "count": int(v)} for (r, c), v in top_conf.items()],
    }


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)  # fixed margins: bbox "tight" redraws twice
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plots(m: dict, table: pd.DataFrame, same: np.ndarray | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    scores = table["score"].to_numpy(np.float64)
    fin = np.isfinite(scores)  # a packed pair list may carry no scores (NaN)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(scores[fin].min(), scores[fin].max(), 40) if fin.any() else 10
    if not fin.any():
        ax.text(0.5, 0.5, "no pair scores (a pair list packed without them)", ha="center", va="center",
                transform=ax.transAxes)
    elif same is not None:
        ax.hist(scores[same & fin], bins=bins, alpha=0.65, label=f"same label ({(same & fin).sum()})", color="tab:green")
        ax.hist(scores[~same & fin], bins=bins, alpha=0.65, label=f"different label ({(~same & fin).sum()})",
                color="tab:red")
        ax.legend()
    else:
        ax.hist(scores[fin], bins=bins, color="tab:blue")
    ax.set(xlabel="pair score", ylabel="pairs", title="Score distribution")
    out["score_hist.png"] = _fig_png(fig)

    if m["labels"] and m["labels"]["precision_coverage"]:
        c = m["labels"]["precision_coverage"]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot([r["coverage"] for r in c], [r["precision"] for r in c], marker="o", ms=3)
        ax.set(xlabel="coverage (share of images anchoring a kept pair)", ylabel="label precision",
               title="Precision vs coverage as the score threshold rises", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        out["precision_coverage.png"] = _fig_png(fig)

    indeg = table["positive_key"].value_counts().to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    vals, cnts = np.unique(indeg, return_counts=True)
    ax.bar(vals, cnts, color="tab:purple")
    ax.set(xlabel="times an image is a positive (in-degree)", ylabel="images", yscale="log",
           title=f"Hubness (skew {m['unsupervised']['hub_skew']:.2f})")
    out["hub_indegree.png"] = _fig_png(fig)
    return out


def _pair_images(ds: PairDataset, ids: list[int], source: ImageSource | None) -> dict[int, tuple[bytes, bytes]]:
    """Images of the given pairs: from the shards (embedded) or by key from a source (reference)."""
    wanted = set(ids)
    got: dict[int, tuple[bytes, bytes]] = {}
    if ds.manifest.layout == "embedded":
        from semipairs.shards import iter_shard, split_sample

        per = [(ds.path / f.path, f.samples or 0) for f in ds.manifest.shard_files()]
        start = 0
        for path, n in per:
            if any(start <= i < start + n for i in wanted):
                for sample in iter_shard(path, n):
                    a, p, meta = split_sample(sample)
                    if meta["pair_id"] in wanted:
                        got[meta["pair_id"]] = (a, p)
            start += n
        return got
    if source is None:
        return got
    t = ds.table
    for i in wanted:
        got[i] = (source.read_key(t["anchor_key"].iloc[i]).data, source.read_key(t["positive_key"].iloc[i]).data)
    return got


def _grid(title: str, rows: pd.DataFrame, images: dict[int, tuple[bytes, bytes]], labels: list[str] | None,
          cell: int = 96, cols: int = 4) -> bytes:
    """Pairs side by side (anchor | positive) with score and labels under each: composed with PIL, which takes
    milliseconds where a matplotlib figure of 32 axes took seconds. Small images are enlarged (nearest)."""
    from PIL import Image, ImageDraw, ImageFont

    shown = rows["pair_id"].isin(images.keys()).to_numpy()
    rows = rows[shown]
    captions = [c for c, s in zip(labels, shown) if s] if labels is not None else None
    pad, cap_h, title_h = 6, 26 if labels is not None else 14, 22
    pair_w = 2 * cell + 3 * pad
    nrows = max(1, -(-len(rows) // cols))
    canvas = Image.new("RGB", (cols * pair_w, title_h + nrows * (cell + cap_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    draw.text((pad, 4), title, fill="black", font=font)
    for j, pid in enumerate(rows["pair_id"].to_numpy()):
        x0, y0 = (j % cols) * pair_w + pad, title_h + (j // cols) * (cell + cap_h + pad)
        for side, data in enumerate(images[int(pid)]):
            im = thumbnail(data, cell)
            scale = cell / max(im.size)
            if scale > 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
            canvas.paste(im, (x0 + side * (cell + pad) + (cell - im.width) // 2, y0 + (cell - im.height) // 2))
        cap = f"{rows['score'].iloc[j]:.3f}" + (f"\n{captions[j]}" if captions is not None else "")
        draw.multiline_text((x0, y0 + cell + 1), cap, fill="black", font=font, spacing=1)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _html(m: dict, images: dict[str, bytes], name: str) -> str:
    def img(fn: str) -> str:
        data = base64.b64encode(images[fn]).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{fn}"><figcaption>{fn}</figcaption></figure>'

    u = m["unsupervised"]
    rows = [("pairs", m["num_pairs"]), ("images", m["num_images"]), ("coverage", f"{m['coverage']:.1%}"),
            ("mutual share", f"{u['mutual_share']:.1%}"), ("hub skew", f"{u['hub_skew']:.2f}"),
            ("max in-degree", u["max_in_degree"]), ("near-duplicates", u["near_duplicates"])]
    rows += [(f"score {k}", f"{v:.4f}") for k, v in m["score_quantiles"].items()]
    lab = m["labels"]
    if lab:
        rows.insert(0, ("label precision", f"{lab['precision']:.1%} ({lab['source']})"))
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    parts = [f"<h1>Pair audit: {html.escape(name)}</h1>", f"<table>{table}</table>"]
    if not lab:
        parts.append("<p><b>No labels</b>: unsupervised signals only (pass --labels-from SRC for precision).</p>")
    else:
        pc = "".join(f"<tr><td>{html.escape(c)}</td><td>{v['pairs']}</td><td>{v['precision']:.1%}</td></tr>"
                     for c, v in lab["per_class"].items())
        parts.append(f"<h2>Per class</h2><table><tr><th>class</th><th>pairs</th><th>precision</th></tr>{pc}</table>")
        conf = "".join(f"<tr><td>{html.escape(r['anchor'])}</td><td>{html.escape(r['positive'])}</td><td>{r['count']}</td></tr>"
                       for r in lab["top_confusions"])
        head = "<tr><th>anchor</th><th>positive</th><th>pairs</th></tr>"
        parts.append(f"<h2>Most frequent wrong pairs</h2><table>{head}{conf}</table>")
    hubs = "".join(f"<tr><td>{html.escape(h['key'])}</td><td>{h['count']}</td></tr>" for h in u["top_hubs"])
    parts.append(f"<h2>Top hubs</h2><table><tr><th>image</th><th>times a positive</th></tr>{hubs}</table>")
    parts.append("<h2>Plots</h2>" + "".join(img(f) for f in images if not f.startswith("grid_")))
    parts.append("<h2>Pairs</h2>" + "".join(img(f) for f in images if f.startswith("grid_")))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}figure{display:inline-block;"
             "margin:6px}img{max-width:100%}")
    head = f"<meta charset='utf-8'><title>Pair audit {html.escape(name)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"


def audit(ds: PairDataset, out: str | Path, labels_from: str | ImageSource | None = None, grid_size: int = 16,
          seed: int = 0, source: ImageSource | None = None) -> AuditResult:
    """Write metrics.json, PNG plots and grids and report.html under ``out``; return the metrics. ``source``
    is the dataset's own source when the caller has it open (curation), so it is not opened again."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = ds.table
    src = _resolve_source(ds, labels_from, source)
    lab = _labels_for(ds, src, explicit=labels_from is not None)
    metrics = compute_metrics(t, ds.manifest.source.num_images, *(lab or (None, None, "", None)),
                              mining_counts=getattr(ds.manifest.mining, "counts", None))
    same = None
    if lab is not None:
        a, p = (x.to_numpy(dtype=float, na_value=np.nan) for x in (lab.anchor, lab.positive))
        same = a == p
    images = _plots(metrics, t, same)

    source = src if ds.manifest.layout == "reference" and src is not None and src.has_images else None
    by_score = t.sort_values("score", ascending=False, kind="stable")
    picks = {"grid_highest.png": ("Highest-score pairs", by_score.head(grid_size)),
             "grid_lowest.png": ("Lowest-score pairs", by_score.tail(grid_size).iloc[::-1])}
    if same is not None and (~same).any():
        wrong = t[~same & lab.anchor.notna().to_numpy()]
        picks["grid_wrong.png"] = ("Wrong pairs (labels differ)", wrong.sample(min(grid_size, len(wrong)), random_state=seed))
    needed = sorted({int(i) for _, rows in picks.values() for i in rows["pair_id"]})
    pair_imgs = _pair_images(ds, needed, source)
    if pair_imgs:
        classes = lab.classes if lab is not None else None
        for fn, (title, rows) in picks.items():
            caps = None
            if lab is not None:
                name = (lambda c: classes[int(c)]) if classes else (lambda c: str(int(c)))
                caps = [f"{name(lab.anchor.iloc[i]) if pd.notna(lab.anchor.iloc[i]) else '?'} / "
                        f"{name(lab.positive.iloc[i]) if pd.notna(lab.positive.iloc[i]) else '?'}" for i in rows["pair_id"]]
            images[fn] = _grid(title, rows, pair_imgs, caps)
    elif src is not None and not src.has_images:
        metrics["grids"] = f"skipped: {src.spec} holds embeddings, not images (--labels-from SRC names an image source)"
    else:
        metrics["grids"] = "skipped: a reference dataset needs its source (--labels-from SRC) to show images"
    for fn, data in images.items():  # each file whole or not at all; a failed write names its file
        write_bytes(out / fn, data)
    write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    write_text(out / "report.html", _html(metrics, images, f"{ds.manifest.name} {ds.manifest.version}"))
    return AuditResult(out, metrics, sorted([*images, "metrics.json", "report.html"]))


def pair_grid(ds: PairDataset, pair_ids: list[int], title: str = "", source: str | ImageSource | None = None) -> bytes:
    """PNG of the given pairs side by side (anchor | positive, score above): for browsing in a notebook.
    A reference dataset needs ``source`` to find its images."""
    src = open_source(source) if isinstance(source, str) else source
    rows = ds.table[ds.table["pair_id"].isin(pair_ids)]
    return _grid(title, rows, _pair_images(ds, [int(i) for i in rows["pair_id"]], src), None)
