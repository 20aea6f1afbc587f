"""`semipairs quickstart` end to end on a reduced setting (the full default is timed in bench/quickstart.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import semipairs
from semipairs.cli import app


@pytest.mark.slow
def test_quickstart_publishes_a_verified_dataset_and_prints_the_table(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--steps", "3", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ds = semipairs.load(res["dataset"])
    assert ds.verify().ok and ds.manifest.encoder.kind == "ckpt" and ds.manifest.stats.label_precision > 0.5
    assert Path(res["audit"]).is_file()
    base, paired = res["rows"]
    assert base["pairs"] is None and paired["pairs"] == ds.manifest.stats.num_pairs
    assert 10.0 < base["knn_top1"] <= 100.0 and 10.0 < paired["knn_top1"] <= 100.0  # above chance on 10 digits

    r = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--steps", "3"])
    assert r.exit_code == 0, r.output
    assert "MoCo-v2 + semantic" in r.output and "kNN top-1" in r.output and "audit report" in r.output  # rich wraps cells
    assert semipairs.list_versions(tmp_path / "qs" / "store" / "quickstart-pairs") == ["1.0.0", "1.0.1"]  # re-run: new version
