"""How pairs reach the loss: in-batch partners (simclr, moco, msf, wcl), queued partners (multi); on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semipairs.checkpoint import load_checkpoint
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
    msf = train(_cfg(cifar_folder, tmp_path / "msf-pairs", method="msf", pairs=str(ring_ds)), progress=False)["epochs"][0]
    assert set(msf["parts"]) == {"mean_shift", "batch_partners", "queued_partners"}  # inbatch: msf's default
    assert msf["parts"]["batch_partners"] >= 1.0 and msf["pair_samples"] == 6 * 16 and all(np.isfinite(msf["step_losses"]))
    assert load_checkpoint(tmp_path / "msf-pairs" / "checkpoint.pt")["teacher"] is not None  # its momentum encoder
    wcl = train(_cfg(cifar_folder, tmp_path / "wcl-pairs", method="wcl", pairs=str(ring_ds), head_norm=True),
                progress=False)["epochs"][0]
    assert wcl["parts"]["batch_partners"] >= 1.0 and wcl["parts"]["component_size"] >= 2.0 and wcl["pair_samples"] == 6 * 16
    with pytest.raises(SemipairsError, match="inbatch needs --method moco, simclr, msf or wcl"):
        train(_cfg(cifar_folder, tmp_path / "simsiam", method="simsiam", pairs=str(ring_ds), pair_mode="inbatch"),
              progress=False)


def test_head_norm_puts_batch_norm_in_every_projection_head_it_names(tmp_path: Path) -> None:
    from torch import nn

    from training.trainer import build_model

    def norms(method: str, head_norm: bool) -> list[int]:
        model, _ = build_model(TrainConfig(method=method, data="digits", out=tmp_path, image_size=16, head_norm=head_norm))
        heads = [m for name, m in model.named_children() if name in ("projector", "projector_k", "graph_head")]
        return [sum(isinstance(x, nn.BatchNorm1d) for x in h.modules()) for h in heads]

    assert norms("simclr", False) == [0] and norms("simclr", True) == [1]
    assert norms("wcl", True) == [1, 1] and norms("moco", True) == [1, 1] and norms("moco", False) == [0, 0]


def test_a_batch_larger_than_the_queue_fills_it_with_its_newest_keys() -> None:
    import torch

    from semipairs.backbones import BackboneSpec, build_backbone
    from training.moco import MoCo

    backbone, dim = build_backbone(BackboneSpec("resnet18", image_size=16))
    moco = MoCo(backbone, dim, queue_size=4)
    keys = torch.nn.functional.normalize(torch.randn(6, 128), dim=1)
    moco.enqueue(keys, torch.arange(6))
    assert torch.equal(moco.queue, keys[2:]) and moco.queue_rows.tolist() == [2, 3, 4, 5] and int(moco.queue_ptr) == 0


def test_components_close_a_batch_of_links_transitively() -> None:
    import torch

    from training.pair_graph import components

    linked = torch.zeros(5, 5, dtype=torch.bool)
    for a, b in [(0, 1), (1, 2), (2, 3)]:  # a chain 0-1-2-3; 4 alone
        linked[a, b] = linked[b, a] = True
    same = components(linked)
    assert same[:4, :4].all() and same[4].tolist() == [False] * 4 + [True] and torch.equal(same, same.T)


def _tiny_backbone():
    from semipairs.backbones import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec("resnet18", image_size=16))


def test_msf_regresses_to_the_mean_of_its_own_key_and_its_partners_keys() -> None:
    import torch
    import torch.nn.functional as F

    from training.msf import MSF

    torch.manual_seed(0)
    backbone, dim = _tiny_backbone()
    msf = MSF(backbone, dim, queue_size=8, momentum=1.0)  # momentum 1: the key encoder stays as it is
    msf.set_partners(torch.tensor([0, 1]), torch.tensor([1, 9]), num_rows=12)  # 0-1 and 1-9
    msf.enqueue(F.normalize(torch.randn(8, 128), dim=1), torch.tensor([9, 9, 5, 5, 5, 5, 5, 5]))
    rows = torch.tensor([0, 1, 2, 3])
    vq, vk = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, parts, keys = msf(vq, vk, rows=rows)
    with torch.no_grad():  # train-mode BN on the same batch gives the same outputs
        p = F.normalize(msf.predictor(msf.projector(msf.backbone(vq).flatten(1))), dim=1)
        k = msf.encode_key(vk)
    targets = [[k[0], k[1]], [k[1], k[0], msf.queue[0], msf.queue[1]], [k[2]], [k[3]]]  # 1's partner 9 is queued twice
    want = torch.stack([2 - 2 * (p[i] * torch.stack(t)).sum(1).mean() for i, t in enumerate(targets)]).mean()
    assert torch.allclose(loss, want, atol=1e-5) and torch.allclose(keys, k)
    assert parts["batch_partners"] == 0.5 and parts["queued_partners"] == 0.5


def test_wcl_keeps_the_instance_head_plain_and_labels_the_graph_head_by_components() -> None:
    import torch
    import torch.nn.functional as F

    from training.losses import supcon
    from training.simclr import view_masks
    from training.wcl import WCL

    torch.manual_seed(0)
    backbone, dim = _tiny_backbone()
    wcl = WCL(backbone, dim)
    wcl.set_partners(torch.tensor([0, 1]), torch.tensor([1, 2]), num_rows=4)  # 0-1-2 one component, 3 alone
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, parts, _ = wcl(v1, v2, rows=torch.tensor([0, 1, 2, 3]))
    assert parts["component_size"] == (3 + 3 + 3 + 1) / 4 and parts["batch_partners"] == (1 + 2 + 1 + 0) / 4
    with torch.no_grad():
        z = F.normalize(wcl.projector(wcl.backbone(torch.cat([v1, v2])).flatten(1)), dim=1)
    twin, valid = view_masks(None, wcl.graph, 4, z.device)
    assert abs(parts["nt_xent"] - float(supcon(z, z, twin, valid, wcl.temperature))) < 1e-5  # pairs never reach it
    assert abs(float(loss.detach()) - parts["nt_xent"] - parts["graph_supcon"]) < 1e-5
    _, plain, _ = wcl(v1, v2)  # no pairs: WCL's own 1-NN links, so every image has a component of >= 2
    assert plain["component_size"] >= 2.0 and "batch_partners" not in plain
