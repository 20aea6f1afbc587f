"""The dataset card (README.md) of a version: Hub YAML metadata + a human summary.

Built with huggingface_hub's DatasetCard, so the metadata is what the Hub validates, and its
``configs`` point ``datasets.load_dataset`` at the shards (embedded) or the pair table (reference).
"""

from __future__ import annotations

from semipairs.manifest import DATA_DIR, PAIRS_NAME, Manifest


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((label for bound, label in bounds if n < bound), "n>1T")


def render_card(m: Manifest, license: str = "other", audit_summary: str | None = None) -> str:
    path = f"{DATA_DIR}/*.tar" if m.layout == "embedded" else PAIRS_NAME
    from huggingface_hub import DatasetCard, DatasetCardData  # when a card is written: the CLI starts without it

    data = DatasetCardData(
        pretty_name=f"{m.name} {m.version} (semantic positive pairs)",
        license=license,
        size_categories=[size_category(m.stats.num_pairs)],
        task_categories=["image-feature-extraction"],
        tags=["semipairs", "self-supervised-learning", "semantic-positive-pairs", "webdataset"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": path}]}],
    )
    s = m.stats
    q = s.score_quantiles
    enc = m.encoder
    lines = [
        f"# {m.name} {m.version}",
        "",
        "Semantic positive pairs for self-supervised learning: each sample is two *different* images of "
        "the same kind of thing, found by a pretrained encoder and a similarity search. Made with "
        f"[semipairs]({'https://github.com/semipairs/semipairs'}) ({m.created_with}), pair-dataset format "
        f"v{m.format_version}, layout `{m.layout}`.",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{m.source.uri}` ({m.source.num_images} images, {len(m.source.skipped)} skipped) |",
        f"| encoder | `{enc.kind}`{' ' + enc.name if enc.name else ''}{' / ' + enc.pretrained if enc.pretrained else ''} |",
        f"| index | `{m.index.factory}`, metric {m.index.metric}{_recall(m)} |",
        f"| mining | {m.mining.strategy} |",
        f"| pairs | {s.num_pairs} ({s.num_anchors} anchors, coverage {s.coverage:.1%}) |",
    ]
    if q:
        lines.append(f"| score p05 / p50 / p95 | {q['p05']:.3f} / {q['p50']:.3f} / {q['p95']:.3f} |")
    if s.label_precision is not None:
        lines.append(f"| label precision | {s.label_precision:.1%} |")
    if m.parent is not None:
        lines.append(f"| parent | {m.parent.name} {m.parent.version} (`{m.parent.content_hash[:16]}`) |")
    lines += ["", f"content_hash: `{m.content_hash}`", ""]
    if m.review is not None:
        lines += ["## Review", "", _review(m), ""]
    if audit_summary:
        lines += ["## Audit", "", audit_summary, ""]
    lines += [
        "## Loading",
        "",
        "```python",
        "import semipairs",
        "ds = semipairs.load(PATH)          # verify with ds.verify()",
        "loader = ds.to_torch(transform)    # (anchor, positive, meta) per pair",
        "```",
        "",
    ]
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).content


def _review(m: Manifest) -> str:
    """What the person's judgments of the reviewed version said, and how this version was cut from it."""
    r = m.review
    est = (f"estimated precision {r.precision:.1%} (95% interval {r.low:.1%} - {r.high:.1%}; {r.method})"
           if r.precision is not None else "no precision estimate (no pair judged same or different)")
    text = (f"Cut from version {r.reviewed_version} after {r.judged} judged pairs ({r.same} same kind, {r.different} "
            f"different, {r.unsure} can't tell{f', {r.disputed} disputed' if r.disputed else ''}; reviewers: "
            f"{', '.join(r.reviewers) or '-'}): {est}. {r.rejected} pairs judged different were removed")
    if r.threshold is not None:
        kept = f" (estimated precision of the rest {r.kept_precision:.1%})" if r.kept_precision is not None else ""
        text += f"; {r.cut} pairs scoring below {r.threshold:.4f} were cut to reach {r.target_precision:.0%}{kept}"
    return text + "."


def _recall(m: Manifest) -> str:
    """The index's measured recall@k, when the manifest records it (optional fields of the v1 index block)."""
    r, k, q = (getattr(m.index, f, None) for f in ("recall_at_k", "recall_k", "recall_queries"))
    if r is None:
        return ""
    return f", recall@{k} {r:.3f}" + (f" on {q} sampled queries" if q else " (exact search)")
