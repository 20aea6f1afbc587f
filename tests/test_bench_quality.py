"""The quality protocol's curve arithmetic (bench/quality.py): the break-even precision it publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.quality import merge_curves, run_name, summarise_curve


def pair(seed: int, pct: int, gain: float) -> dict:
    return {"seed": seed, "kind": "pairs", "precision": pct / 100, "gain_points": gain}


def test_break_even_is_where_the_mean_curve_rises_through_zero() -> None:
    runs = [{"seed": 0, "kind": "baseline", "precision": None}, pair(0, 30, -1.0), pair(1, 30, -0.5),
            pair(0, 60, 2.0), pair(1, 60, 4.0), pair(0, 90, 9.0)]
    s = summarise_curve(runs)
    assert [r["precision_pct"] for r in s["by_precision"]] == [30, 60, 90]
    assert s["by_precision"][0] == {"precision_pct": 30, "seeds": [0, 1], "mean_gain": -0.75, "min_gain": -1.0,
                                    "max_gain": -0.5}
    assert s["break_even_precision_pct"] == pytest.approx(30 + 30 * 0.75 / 3.75, abs=0.05)  # 36.0
    assert s["break_even_bound"] is None


def test_break_even_outside_the_measured_range_names_the_side() -> None:
    assert summarise_curve([pair(0, 60, 1.0), pair(0, 90, 5.0)])["break_even_bound"] == "below 60%"
    s = summarise_curve([pair(0, 30, -2.0), pair(0, 45, -0.1)])
    assert s["break_even_precision_pct"] is None and s["break_even_bound"] == "above 45%"


def test_merge_keeps_the_first_row_and_refuses_another_budget(tmp_path: Path) -> None:
    machine = {"cpu_flags": ["avx2"]}
    setting = {"steps": 3500, "train_images": 10000, "batch_size": 128, "method": "simclr", "pair_mode": "inbatch"}
    base = {"seed": 0, "kind": "baseline", "precision": None, "knn_top1": 47.0}
    a = {"benchmark": "quality.precision_curve", "machine": machine, "setting": setting,
         "runs": [base, {**pair(0, 90, 14.0), "knn_top1": 61.0}]}
    b = {**a, "runs": [base, {**pair(0, 60, 5.0), "knn_top1": 52.0}, {**pair(0, 90, 13.0), "knn_top1": 60.0}]}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    m = merge_curves([str(pa), str(pb)])
    assert [(r["kind"], r["precision"], r["from"]) for r in m["runs"]] == [
        ("baseline", None, str(pa)), ("pairs", 0.9, str(pa)), ("pairs", 0.6, str(pb))]
    assert m["summary"]["break_even_bound"] == "below 60%"
    pb.write_text(json.dumps({**b, "setting": {**setting, "steps": 2000}}))
    with pytest.raises(SystemExit, match="another budget or CPU kind"):
        merge_curves([str(pa), str(pb)])


def test_each_mining_setting_of_one_encoder_trains_in_its_own_directory() -> None:
    """Two self-mined rows from one checkpoint (k 10 and k 20) once shared a directory, and the second deleted
    the first one's checkpoint: the directory names the mining setting, and never holds a path separator."""
    mining = {"k": 10, "mutual": False, "min_score_quantile": None, "max_per_anchor": 10, "duplicate_threshold": 0.999}
    enc = "ckpt:/tmp/sp-quality/seed0/baseline/checkpoint.pt"
    names = {run_name(enc, "pixels", mining), run_name(enc, "pixels", {**mining, "k": 20, "max_per_anchor": 20}),
             run_name(enc, "pixels", {**mining, "mutual": True, "min_score_quantile": 0.3}), run_name(enc, None, mining),
             run_name("ckpt", None, mining)}
    assert len(names) == 5 and not any("/" in n for n in names)
    assert run_name("ckpt", None, {**mining, "mutual": True, "min_score_quantile": 0.3}) == "with-pairs-k10-m10-q0.3"
