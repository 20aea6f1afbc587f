"""Training on real CIFAR-10 JPEGs: MoCo-v2 / SimSiam steps, SePP-ID pairs, resume, DDP, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from typer.testing import CliRunner

import semipairs
from semipairs.checkpoint import load_checkpoint
from semipairs.cli import app
from semipairs.errors import SemipairsError
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs
from training.evaluate import knn_top1
from training.streamed import SePPViews
from training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def pairs_ds(cifar_folder: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pairs")
    src = f"imagefolder:{cifar_folder}"
    csv = ring_pairs(open_source(src).keys(), tmp / "p.csv", step=1)
    return pack(src, csv, tmp / "store", "ring", "1.0.0", shard_size=100, progress=False)


def _cfg(cifar_folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(method="moco", data=f"imagefolder:{cifar_folder}", out=out, epochs=3, batch_size=32, image_size=16,
                queue_size=64, num_workers=0, lr=0.3, seed=0)
    return TrainConfig(**(base | kw))


def test_real_moco_steps_lower_the_loss(cifar_folder: Path) -> None:
    """Backbone, projector, momentum encoder, queue, InfoNCE and SGD on 32 real images with light views."""
    from semipairs.backbones import BackboneSpec, build_backbone
    from training.moco import MoCo

    torch.manual_seed(0)
    src = open_source(f"imagefolder:{cifar_folder}")
    tf = v2.Compose([v2.ToImage(), v2.Resize(16, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True)])
    imgs = [src.read(i).image() for i in range(0, 300, 10)][:32]
    backbone, dim = build_backbone(BackboneSpec("resnet18", image_size=16))
    moco = MoCo(backbone, dim, queue_size=64)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    views = lambda: torch.stack([tf(i) for i in imgs])  # noqa: E731
    with torch.no_grad():  # fill the queue with real keys first: a random queue makes the first losses too easy
        for _ in range(2):
            moco.enqueue(moco.encode_key(views()))
    losses = []
    for _ in range(15):
        loss, _, keys = moco(views(), views())
        opt.zero_grad()
        loss.backward()
        opt.step()
        moco.enqueue(keys)
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


@pytest.mark.slow
def test_trainer_runs_both_methods_with_pairs(cifar_folder: Path, pairs_ds: Path, tmp_path: Path) -> None:
    sims = train(_cfg(cifar_folder, tmp_path / "simsiam", method="simsiam", pairs=str(pairs_ds), epochs=3), progress=False)
    losses = [e["loss"] for e in sims["epochs"]]
    assert losses[-1] < losses[0] and min(losses) >= -1.0, losses
    assert all(e["pair_samples"] > 0 for e in sims["epochs"])  # pairs really joined each epoch
    moco = train(_cfg(cifar_folder, tmp_path / "moco", pairs=str(pairs_ds), epochs=1), progress=False)
    row = moco["epochs"][0]
    assert np.isfinite(row["loss"]) and row["pair_samples"] > 0 and len(row["step_losses"]) == 18
    for run in ("simsiam", "moco"):
        assert (tmp_path / run / "checkpoint.pt").is_file() and (tmp_path / run / "config.yaml").is_file()
    assert load_checkpoint(tmp_path / "moco" / "checkpoint.pt")["teacher"] is not None


def test_pairs_mined_with_a_checkpoint_name_the_pairs_it_was_trained_with_as_parent(cifar_folder: Path, pairs_ds: Path,
                                                                                   tmp_path: Path) -> None:
    """train -> mine -> train rounds: each round's dataset records the one that trained its encoder."""
    from curation.mine import MiningConfig
    from curation.pipeline import CurateConfig, curate

    ring = semipairs.load(pairs_ds).manifest
    for name, pairs in (("paired", str(pairs_ds)), ("plain", None)):
        train(_cfg(cifar_folder, tmp_path / name, method="simclr", pairs=pairs, epochs=1, max_steps=2), progress=False)

    def parent_of(ckpt: Path, name: str):
        res = curate(CurateConfig(source=f"imagefolder:{cifar_folder}", encoder=f"ckpt:{ckpt}", store=tmp_path / "s",
                                  name=name, num_workers=0, mining=MiningConfig(k=5)), progress=False)
        return semipairs.load(res.path).manifest.parent

    state = load_checkpoint(tmp_path / "paired" / "checkpoint.pt")
    assert state["pairs_dataset"] == {"name": "ring", "version": "1.0.0", "content_hash": ring.content_hash}
    got = parent_of(tmp_path / "paired" / "checkpoint.pt", "round2")
    assert (got.name, got.version, got.content_hash) == ("ring", "1.0.0", ring.content_hash)
    assert parent_of(tmp_path / "plain" / "checkpoint.pt", "round1") is None
    # a checkpoint written before the field existed: its config's pairs path, read while it still loads
    torch.save({k: v for k, v in state.items() if k != "pairs_dataset"}, tmp_path / "old.pt")
    assert parent_of(tmp_path / "old.pt", "old").content_hash == ring.content_hash
    torch.save({**{k: v for k, v in state.items() if k != "pairs_dataset"},
                "config": {**state["config"], "pairs": str(tmp_path / "gone")}}, tmp_path / "moved.pt")
    assert parent_of(tmp_path / "moved.pt", "moved") is None


def test_moco_with_reco_terms_trains(cifar_folder: Path, tmp_path: Path) -> None:
    m = train(_cfg(cifar_folder, tmp_path / "reco", reco=True, epochs=1), progress=False)
    parts = m["epochs"][0]["parts"]
    assert set(parts) == {"info_nce", "reco_global", "reco_local"} and all(np.isfinite(list(parts.values())))


def test_pair_sample_second_view_comes_from_the_partner(cifar_folder: Path, pairs_ds: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    ds = semipairs.load(pairs_ds)
    plain = v2.Compose([v2.ToImage()])
    views = list(SePPViews(src, plain, ds, pair_ratio=1.0, seed=3))
    assert len(views) == 600 and sum(i["kind"] for _, _, i in views) == 300
    table = ds.table
    pos = src.index_of()
    for a, p, info in views:
        if info["kind"] == 1:
            row = table.iloc[info["index"]]
            assert torch.equal(a, plain(src.read(pos[row["anchor_key"]]).image()))
            assert torch.equal(p, plain(src.read(pos[row["positive_key"]]).image()))
            assert not torch.equal(a, p)
        else:
            assert torch.equal(a, p) and torch.equal(a, plain(src.read(info["index"]).image()))
    half = list(SePPViews(src, plain, ds, pair_ratio=0.5, seed=3))
    assert sum(i["kind"] for _, _, i in half) == 150


def test_reference_layout_pairs_resolve_against_data(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    ref = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=2), tmp_path / "s", "ref", "1.0.0",
               layout="reference", progress=False)
    m = train(_cfg(cifar_folder, tmp_path / "run", pairs=str(ref), epochs=1), progress=False)
    assert m["epochs"][0]["pair_samples"] > 0


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(cifar_folder: Path, pairs_ds: Path, tmp_path: Path) -> None:
    full = train(_cfg(cifar_folder, tmp_path / "full", epochs=2, pairs=str(pairs_ds)), progress=False)
    first = train(_cfg(cifar_folder, tmp_path / "cut", epochs=2, pairs=str(pairs_ds), stop_after=1), progress=False)
    assert len(first["epochs"]) == 1
    resumed = train(_cfg(cifar_folder, tmp_path / "cut", epochs=2, pairs=str(pairs_ds)), progress=False)
    seq = lambda m: [x for e in m["epochs"] for x in e["step_losses"]]  # noqa: E731
    assert seq(resumed) == seq(full) and len(seq(full)) == 2 * 18
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert torch.equal(a["model"]["queue"], b["model"]["queue"]) and a["epoch"] == b["epoch"] == 2


def test_resume_refuses_a_run_of_another_model_by_name(cifar_folder: Path, tmp_path: Path) -> None:
    train(_cfg(cifar_folder, tmp_path / "run", method="simclr", max_steps=1), progress=False)
    refused = r"checkpoint.pt: this run was trained with another model \(head_norm False -> True\)"
    with pytest.raises(SemipairsError, match=refused):
        train(_cfg(cifar_folder, tmp_path / "run", method="simclr", max_steps=1, head_norm=True), progress=False)
    again = train(_cfg(cifar_folder, tmp_path / "run", method="simclr", max_steps=1), progress=False)  # its own settings
    assert sum(len(e["step_losses"]) for e in again["epochs"]) == 1
    # SimCLR keeps no queue, so its size shapes nothing there: a changed --queue-size still resumes
    same = train(_cfg(cifar_folder, tmp_path / "run", method="simclr", max_steps=1, queue_size=512), progress=False)
    assert same["epochs"] == again["epochs"]
    train(_cfg(cifar_folder, tmp_path / "moco", max_steps=1), progress=False)  # MoCo's queue is part of its model
    with pytest.raises(SemipairsError, match=r"another model \(queue_size 64 -> 128\)"):
        train(_cfg(cifar_folder, tmp_path / "moco", max_steps=1, queue_size=128), progress=False)


@pytest.mark.slow
def test_torchrun_two_ranks_read_different_shards_and_share_the_queue(cifar_folder: Path, pairs_ds: Path,
                                                                      tmp_path: Path) -> None:
    probe = Path(__file__).with_name("ddp_probe.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(probe.parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(probe),
           f"imagefolder:{cifar_folder}", str(pairs_ds), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)  # a hang fails fast
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"probe-{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] > 0
    assert not set(r0["pair_ids"]) & set(r1["pair_ids"]) and len(r0["pair_ids"]) + len(r1["pair_ids"]) == 300
    assert r0["samples"] == r1["samples"] == 300  # equal epochs: 150 own images + a quota of 150 pairs each
    assert not set(r0["shards"]) & set(r1["shards"]) and sorted(r0["shards"] + r1["shards"]) == [0, 1, 2]
    assert r0["queue_ok"] and r1["queue_ok"] and r0["queue_ptr"] == r1["queue_ptr"] == 16
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 1


def test_knn_scores_separated_features_perfectly_and_random_ones_at_chance() -> None:
    g = torch.Generator().manual_seed(0)
    y_tr, y_te = torch.arange(2000) % 10, torch.arange(1000) % 10
    centers = torch.nn.functional.normalize(torch.randn(10, 64, generator=g), dim=1)
    noisy = lambda y: torch.nn.functional.normalize(centers[y] + 0.05 * torch.randn(len(y), 64, generator=g), dim=1)  # noqa: E731
    assert knn_top1(noisy(y_tr), y_tr, noisy(y_te), y_te) == 100.0
    rand = lambda n: torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1)  # noqa: E731
    assert 5.0 <= knn_top1(rand(2000), y_tr, rand(1000), y_te) <= 15.0


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    from curation.encoders import EncoderError, load_encoder

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"backbone": {}, "backbone_spec": {"arch": "resnet18"}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused or unreadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(EncoderError, match="refused"):
        load_encoder(f"ckpt:{tmp_path / 'evil.pt'}")


@pytest.mark.slow
def test_cli_train_then_eval_and_ckpt_encoder(cifar_folder: Path, tmp_path: Path) -> None:
    from curation.encoders import load_encoder

    folder = f"imagefolder:{cifar_folder}"
    r = CliRunner().invoke(app, ["train", "--method", "simsiam", "--data", folder, "--epochs", "1", "--batch-size", "32",
                                 "--image-size", "16", "--num-workers", "0", "--eval-train", folder, "--eval-test", folder,
                                 "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["epochs"] == 1 and 0 <= summary["knn_top1"] <= 100
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"][0]["knn_top1"] == summary["knn_top1"]
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--train", folder,
                                 "--test", folder, "--linear", "--num-workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["knn_top1"] == pytest.approx(summary["knn_top1"], abs=0.01) and res["linear_top1"] > 33.4
    enc = load_encoder(f"ckpt:{tmp_path / 'run' / 'checkpoint.pt'}")
    assert enc.info.kind == "ckpt" and enc.info.image_size == 16 and enc.info.dim == 512


@pytest.mark.slow
def test_max_steps_is_a_fixed_budget_across_epochs(cifar_folder: Path, tmp_path: Path) -> None:
    m = train(_cfg(cifar_folder, tmp_path / "budget", method="simsiam", batch_size=64, epochs=5, max_steps=6), progress=False)
    assert [len(e["step_losses"]) for e in m["epochs"]] == [4, 2]  # 4 full batches per epoch, then the budget ends
    assert m["epochs"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine schedule spans exactly the budget
