"""Pair-quality audit: metrics with known answers, outputs, errors, and both notebooks executed."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

import semipairs
from curation.audit import AuditError, audit, compute_metrics
from semipairs.cli import app
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs

REPO = Path(__file__).resolve().parents[1]


def _hand_table() -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    # images a, b (class 0) and c, d, e (class 1)
    t = pd.DataFrame({
        "pair_id": range(5),
        "anchor_key": ["a", "b", "c", "d", "e"],
        "positive_key": ["b", "a", "a", "e", "a"],
        "score": [0.9, 0.8, 0.7, 0.6, 0.5],
        "mutual": [True, True, False, False, False],
    })
    lab = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1}
    return t, t["anchor_key"].map(lab).astype("Int32"), t["positive_key"].map(lab).astype("Int32")


def test_metrics_on_a_hand_made_table() -> None:
    t, a, p = _hand_table()
    m = compute_metrics(t, 5, a, p, "hand", ["zero", "one"])
    assert m["num_pairs"] == 5 and m["coverage"] == 1.0
    lab = m["labels"]
    assert lab["precision"] == pytest.approx(3 / 5) and lab["wrong_pairs"] == 2
    assert lab["per_class"] == {"zero": {"pairs": 2, "precision": 1.0}, "one": {"pairs": 3, "precision": pytest.approx(1 / 3)}}
    points = {r["pairs"]: r for r in lab["precision_coverage"]}
    assert points[1] == {"threshold": 0.9, "pairs": 1, "coverage": 0.2, "precision": 1.0}
    assert points[3]["precision"] == pytest.approx(2 / 3) and points[3]["coverage"] == pytest.approx(0.6)
    assert points[3]["threshold"] == 0.7 and points[5]["precision"] == pytest.approx(0.6)
    assert lab["top_confusions"] == [{"anchor": "one", "positive": "zero", "count": 2}]
    u = m["unsupervised"]
    # in-degrees a:3, b:1, e:1, c:0, d:0 -> mean 1, var 1.2, third central moment 1.2
    assert u["hub_skew"] == pytest.approx(1.2 / 1.2**1.5)
    assert u["top_hubs"][0] == {"key": "a", "count": 3} and u["max_in_degree"] == 3
    assert u["mutual_share"] == pytest.approx(0.4) and u["near_duplicates"] == 0
    assert m["score_quantiles"]["p50"] == pytest.approx(0.7)
    assert compute_metrics(t, 5)["labels"] is None


@pytest.fixture(scope="module")
def unlabelled(cifar_folder: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A pair dataset over images without labels (flat folder), plus the labelled original."""
    tmp = tmp_path_factory.mktemp("audit")
    flat = tmp / "flat"
    flat.mkdir()
    for f in sorted(cifar_folder.rglob("*.jpg"))[::3]:
        (flat / f"{f.parent.name}_{f.stem}.jpg").write_bytes(f.read_bytes())
    src = f"imagefolder:{flat}"
    path = pack(src, ring_pairs(open_source(src).keys(), tmp / "p.csv"), tmp / "store", "flat", "1.0.0", progress=False)
    return path, flat


def test_audit_writes_report_plots_and_grids(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    path = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=3), tmp_path / "s", "lab", "1.0.0",
                progress=False)
    audit(semipairs.load(path), tmp_path / "audit")
    for name in ("metrics.json", "report.html", "score_hist.png", "precision_coverage.png", "hub_indegree.png",
                 "grid_highest.png", "grid_lowest.png", "grid_wrong.png"):
        assert (tmp_path / "audit" / name).stat().st_size > 1000, name
    m = json.loads((tmp_path / "audit" / "metrics.json").read_text())
    t = semipairs.load(path).table
    assert m["labels"]["precision"] == pytest.approx((t["anchor_label"] == t["positive_label"]).mean())
    assert set(m["labels"]["per_class"]) == {"airplane", "cat", "ship"}  # names from the dataset's source
    page = (tmp_path / "audit" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "Per class" in page and "src=\"http" not in page


def test_without_labels_the_audit_says_so_and_labels_from_works(unlabelled, cifar_folder: Path, tmp_path: Path) -> None:
    path, flat = unlabelled
    ds = semipairs.load(path)
    r = CliRunner().invoke(app, ["audit", str(path), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "unsupervised part only" in r.output and not (tmp_path / "a" / "precision_coverage.png").exists()
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["labels"] is None
    with pytest.raises(AuditError, match=r"100 pair key\(s\) have no label there"):
        audit(ds, tmp_path / "b", labels_from=f"imagefolder:{cifar_folder}")
    with pytest.raises(AuditError, match="no labels to audit against"):
        audit(ds, tmp_path / "c", labels_from=f"imagefolder:{flat}")


def test_curate_writes_the_audit_into_the_version(cifar_folder: Path, tmp_path: Path) -> None:
    from curation.mine import MiningConfig
    from curation.pipeline import CurateConfig, curate

    res = curate(CurateConfig(source=f"imagefolder:{cifar_folder}", store=tmp_path / "s", name="c", num_workers=0,
                              mining=MiningConfig(k=5)), progress=False)
    assert (res.path / "audit" / "report.html").is_file() and semipairs.load(res.path).verify().ok
    card = (res.path / "README.md").read_text()
    assert "## Audit" in card and "label precision" in card


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["audit_pairs.ipynb", "train_with_pairs.ipynb"])
def test_notebooks_run_top_to_bottom(notebook: str, tmp_path: Path, monkeypatch) -> None:
    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    monkeypatch.setenv("SEMIPAIRS_NOTEBOOK_STEPS", "12")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images  # plots and grids were shown


def test_reference_layout_audit_reads_images_from_the_labels_source(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    path = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=4), tmp_path / "s", "ref", "1.0.0",
                layout="reference", progress=False)
    res = audit(semipairs.load(path), tmp_path / "audit", labels_from=src)
    assert res.metrics["labels"]["source"] == src and "grids" not in res.metrics
    assert (tmp_path / "audit" / "grid_wrong.png").stat().st_size > 1000


def test_a_pair_list_packed_without_scores_is_audited(tmp_path: Path) -> None:
    """Pairs made elsewhere carry no scores (NaN): the histogram says so instead of crashing on NaN."""
    pairs = tmp_path / "p.csv"
    pairs.write_text("anchor_key,positive_key\n" + "".join(f"{i:04d},{i + 1:04d}\n" for i in range(0, 200, 2)))
    path = pack("digits", pairs, tmp_path / "s", "d", "1.0.0", progress=False)
    res = audit(semipairs.load(path), tmp_path / "audit")
    assert res.metrics["labels"]["precision"] == 0.13 and res.metrics["score_quantiles"] == {}  # 13 of 100 share a digit
    assert (tmp_path / "audit" / "score_hist.png").stat().st_size > 1000
