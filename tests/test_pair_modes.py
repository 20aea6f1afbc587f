"""How pairs reach the loss: in-batch partners (simclr, moco), queued partners (multi); on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semipairs.errors import SemipairsError
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs
from training.decoded_batches import PAIR, PairRows, plan_epoch, samples_per_epoch
from training.trainer import TrainConfig, train


def test_inbatch_batches_carry_one_partner_of_every_anchor() -> None:
    n = 100
    ok = np.ones(n, bool)
    ok[99] = False  # unreadable: never planned
    pairs = PairRows(np.arange(0, 60), (np.arange(0, 60) + 1) % 60, np.arange(60))  # a ring over 0..59; 60..98 alone
    edges = {(a, b) for a, b in zip(pairs.anchor, pairs.positive)} | {(b, a) for a, b in zip(pairs.anchor, pairs.positive)}
    assert samples_per_epoch(ok, pairs, "inbatch", 1.0) == 2 * 99
    steps = 99 // 8
    anchors, partnered = [], 0
    for b in plan_epoch(ok, pairs, seed=0, epoch=0, rank=0, world=1, batch_size=16, steps=steps, mode="inbatch"):
        assert np.array_equal(b.rows_a, b.rows_b) and ok[b.rows_a].all() and len(b.rows_a) == 16
        first, second = b.rows_a[:8], b.rows_a[8:]
        for a, p, kind in zip(first, second, b.kind[8:]):
            assert kind == (PAIR if a < 60 else 0)
            if a < 60:
                assert (a, p) in edges  # the partner is in the batch, right after the anchors
                partnered += 1
        anchors.extend(first.tolist())
    assert len(set(anchors)) == len(anchors) == steps * 8  # every image at most once an anchor in an epoch
    assert partnered == sum(a < 60 for a in anchors) > 0
    slices = [set(np.concatenate([b.rows_a[:4] for b in plan_epoch(ok, pairs, seed=0, epoch=0, rank=r, world=2,
                                                                     batch_size=8, steps=12, mode="inbatch")]))
              for r in (0, 1)]
    assert not slices[0] & slices[1]  # ranks anchor disjoint images


@pytest.fixture(scope="module")
def ring_ds(cifar_folder: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ring")
    src = f"imagefolder:{cifar_folder}"
    return pack(src, ring_pairs(open_source(src).keys(), tmp / "p.csv"), tmp / "store", "ring", "1.0.0", progress=False,
                layout="reference")


def _cfg(cifar_folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(method="moco", data=f"imagefolder:{cifar_folder}", out=out, epochs=100, max_steps=6, batch_size=32,
                image_size=16, queue_size=64, num_workers=0, lr=0.3, seed=0, precision="fp32")
    return TrainConfig(**(base | kw))


@pytest.mark.slow
def test_simclr_and_moco_take_partners_in_the_batch_as_positives(cifar_folder: Path, ring_ds: Path, tmp_path: Path) -> None:
    plain = train(_cfg(cifar_folder, tmp_path / "simclr", method="simclr"), progress=False)["epochs"][0]
    assert plain["parts"]["batch_partners"] == 0 and plain["pair_samples"] == 0
    sim = train(_cfg(cifar_folder, tmp_path / "simclr-pairs", method="simclr", pairs=str(ring_ds), pair_mode="inbatch"),
                progress=False)["epochs"][0]
    # 16 anchors + their ring partner: each view has its twin plus both views of its partner (more when rings meet)
    assert sim["pair_samples"] == 6 * 16 and sim["parts"]["batch_partners"] >= 2.0
    assert all(np.isfinite(sim["step_losses"]))
    moco = train(_cfg(cifar_folder, tmp_path / "moco-pairs", method="moco", pairs=str(ring_ds), pair_mode="inbatch"),
                 progress=False)["epochs"][0]
    assert set(moco["parts"]) == {"inbatch_nce", "batch_partners", "queued_partners_removed"}
    assert moco["parts"]["batch_partners"] >= 1.0 and moco["pair_samples"] == 6 * 16
    multi = train(_cfg(cifar_folder, tmp_path / "moco-multi", method="moco", pairs=str(ring_ds), pair_mode="multi",
                       max_steps=12), progress=False)["epochs"][0]
    assert "queued_partners" in multi["parts"] and all(np.isfinite(multi["step_losses"]))
    with pytest.raises(SemipairsError, match="inbatch needs --method moco or simclr"):
        train(_cfg(cifar_folder, tmp_path / "simsiam", method="simsiam", pairs=str(ring_ds), pair_mode="inbatch"),
              progress=False)


def test_a_batch_larger_than_the_queue_fills_it_with_its_newest_keys() -> None:
    import torch

    from semipairs.backbones import BackboneSpec, build_backbone
    from training.moco import MoCo

    backbone, dim = build_backbone(BackboneSpec("resnet18", image_size=16))
    moco = MoCo(backbone, dim, queue_size=4)
    keys = torch.nn.functional.normalize(torch.randn(6, 128), dim=1)
    moco.enqueue(keys, torch.arange(6))
    assert torch.equal(moco.queue, keys[2:]) and moco.queue_rows.tolist() == [2, 3, 4, 5] and int(moco.queue_ptr) == 0
