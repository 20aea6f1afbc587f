"""Curation on real CIFAR-10 images: encoders, resumable embeddings, faiss, mining, publish, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import semipairs
from curation.embed import embed_source
from curation.encoders import EncoderError, load_encoder
from curation.index import IndexConfig, build_index, search
from curation.mine import MiningConfig, mine
from curation.pipeline import CurateConfig, curate
from semipairs.cli import app
from semipairs.errors import SemipairsError
from semipairs.hashing import sha256_file
from semipairs.sources import open_source


def _cfg(folder: Path, store: Path, **kw) -> CurateConfig:
    mining = kw.pop("mining", MiningConfig(k=5))
    return CurateConfig(source=f"imagefolder:{folder}", store=store, name=kw.pop("name", "pairs"), mining=mining,
                        num_workers=0, chunk_size=kw.pop("chunk_size", 128), **kw)


def test_curate_pixels_fills_manifest_and_precision_matches_a_recount(cifar_folder: Path, tmp_path: Path) -> None:
    res = curate(_cfg(cifar_folder, tmp_path / "store", mining=MiningConfig(k=5, max_per_anchor=2)), progress=False)
    ds = semipairs.load(res.path)
    m, t = ds.manifest, ds.table
    assert ds.verify().ok
    assert m.encoder.kind == "pixels" and m.encoder.dim == 3 * 16 * 16
    assert m.index.factory == "Flat" and m.index.metric == "cosine"
    assert m.mining.strategy == "knn" and m.mining.k == 5 and m.mining.max_per_anchor == 2
    assert m.mining.counts["pairs"] == len(t) == m.stats.num_pairs
    recount = float((t["anchor_label"] == t["positive_label"]).mean())
    assert m.stats.label_precision == pytest.approx(recount)
    assert m.stats.coverage == pytest.approx(t["anchor_key"].nunique() / 300)
    assert (t["anchor_key"] != t["positive_key"]).all()
    assert t["score"].is_monotonic_increasing is False and (t["score"] <= 1.0 + 1e-5).all()
    assert t.groupby("anchor_key").size().max() <= 2
    assert recount > 1 / 3 + 0.1  # pixels beat chance (3 balanced classes) on airplane/cat/ship


def test_mutual_filtering_only_removes_pairs(cifar_folder: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    emb = embed_source(src, load_encoder("pixels"), cifar_folder.parent / "cache", num_workers=0, progress=False)
    index, _ = build_index(emb.vectors, IndexConfig())
    scores, ids = search(index, emb.vectors, 10, 128, progress=False)
    assert not (ids == np.arange(300)[:, None]).any()
    base = dict(k=10, max_per_anchor=10, symmetric_dedup=False, duplicate_threshold=None)
    plain = mine(scores, ids, MiningConfig(**base)).pairs
    mutual = mine(scores, ids, MiningConfig(**base, mutual=True)).pairs
    as_set = lambda df: set(zip(df["anchor"], df["positive"]))  # noqa: E731
    assert 0 < len(mutual) < len(plain) and as_set(mutual) <= as_set(plain)
    assert mutual["mutual"].all() and (as_set(mutual) == {(a, p) for a, p in as_set(plain) if (p, a) in as_set(plain)})


def test_mining_thresholds_duplicates_and_symmetry() -> None:
    # 4 points: 0 and 1 near-duplicates, 2 and 3 a clear pair
    scores = np.array([[0.99, 0.5], [0.99, 0.4], [0.8, 0.3], [0.8, 0.2]], np.float32)
    ids = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    r = mine(scores, ids, MiningConfig(k=2, duplicate_threshold=0.98, min_score=0.45))
    assert r.counts["near_duplicates"] == 2 and r.counts["symmetric_duplicates"] == 1
    assert r.pairs[["anchor", "positive"]].values.tolist() == [[0, 2], [2, 3]]
    q = mine(scores, ids, MiningConfig(k=2, duplicate_threshold=None, min_score_quantile=0.5))
    assert q.threshold == pytest.approx(float(np.quantile(scores, 0.5)))
    with pytest.raises(ValueError, match="not both"):
        MiningConfig(min_score=0.1, min_score_quantile=0.5)


def test_agreement_keeps_a_candidate_only_when_the_second_encoder_finds_it_too() -> None:
    # 4 images, k = 2; the second encoder's lists share (0, 1) and (2, 3) with the first, and (1, 0) is missing
    scores = np.array([[0.9, 0.5], [0.9, 0.4], [0.8, 0.3], [0.8, 0.2]], np.float32)
    ids = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    agree = np.array([[1, 3], [2, -1], [3, 1], [2, 0]])
    cfg = MiningConfig(k=2, max_per_anchor=2, symmetric_dedup=False, duplicate_threshold=None)
    r = mine(scores, ids, cfg, agree)
    assert r.pairs[["anchor", "positive"]].values.tolist() == [[0, 1], [2, 3], [3, 2]]
    assert r.counts["not_agreed"] == 5 and r.counts["pairs"] == 3
    assert "not_agreed" not in mine(scores, ids, cfg).counts


def test_curate_agree_with_keeps_the_pairs_both_encoders_find(cifar_folder: Path, tmp_path: Path) -> None:
    import shutil

    import torchvision
    from PIL import Image

    folder = tmp_path / "images"
    shutil.copytree(cifar_folder, folder)
    Image.new("RGB", (32, 32), (128, 128, 128)).save(folder / "cat" / "grey.jpg")  # pixels: all zeros, no direction
    torch.manual_seed(0)
    weights = tmp_path / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    first = f"torchvision:resnet18/{weights}"
    mining = MiningConfig(k=5, max_per_anchor=5, symmetric_dedup=False, duplicate_threshold=None)
    # exact sets are recounted below: both sides in fp32 (under auto, a native-bf16 CPU may time bf16 as faster
    # for one side only, and bf16 reorders near-tied neighbours)
    res = curate(_cfg(folder, tmp_path / "s", encoder=first, agree_with="pixels", image_size=32, mining=mining,
                      precision="fp32"), progress=False)
    ds = semipairs.load(res.path)
    m, t = ds.manifest, ds.table

    # the same sets recomputed by hand: each encoder's 5 nearest neighbours among the images both can use
    src = open_source(f"imagefolder:{folder}")
    keys = np.array(src.keys())
    one = embed_source(src, load_encoder(first, 32), tmp_path / "c1", num_workers=0, progress=False, precision="fp32")
    two = embed_source(src, load_encoder("pixels", 32), tmp_path / "c2", num_workers=0, progress=False, precision="fp32")
    grey = list(keys).index("cat/grey")
    good = np.flatnonzero(np.linalg.norm(two.vectors, axis=1) > 0)
    assert grey not in good and len(good) == 300

    def neighbours(x: np.ndarray) -> set:
        x = x[good] / np.linalg.norm(x[good], axis=1, keepdims=True)
        nn = np.argsort(-(x @ x.T) + 10 * np.eye(len(x)), axis=1)[:, :5]
        return {(keys[good[a]], keys[good[b]]) for a in range(len(x)) for b in nn[a]}

    expected = neighbours(np.asarray(one.vectors)) & neighbours(np.asarray(two.vectors))
    assert set(zip(t["anchor_key"], t["positive_key"])) == expected and 0 < len(expected) < 300 * 5
    assert m.mining.counts["not_agreed"] == 300 * 5 - len(expected)
    assert m.encoder.kind == "torchvision" and m.mining.agree_with["kind"] == "pixels"
    assert [(s.key, "all zeros" in s.reason) for s in m.source.skipped] == [("cat/grey", True)]
    assert ds.verify().ok


def test_resume_does_not_recompute_finished_chunks(cifar_folder: Path, tmp_path: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    enc = load_encoder("pixels")
    calls = {"n": 0, "fail_at": 5}
    inner = enc.model

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise KeyboardInterrupt("simulated interruption")
            return inner(x)

    enc.model = Counting()
    kw = dict(batch_size=32, num_workers=0, chunk_size=64, progress=False)  # 5 chunks, 10 batches
    with pytest.raises(KeyboardInterrupt):
        embed_source(src, enc, tmp_path / "cache", **kw)
    assert calls["n"] == 5  # chunks 0 and 1 (4 batches) were finished
    calls.update(n=0, fail_at=-1)
    resumed = embed_source(src, enc, tmp_path / "cache", **kw)
    assert calls["n"] == 6
    calls["n"] = 0
    again = embed_source(src, enc, tmp_path / "cache", **kw)
    assert calls["n"] == 0
    fresh = embed_source(src, load_encoder("pixels"), tmp_path / "other", **kw)
    np.testing.assert_allclose(resumed.vectors, fresh.vectors, atol=1e-6)
    np.testing.assert_array_equal(again.vectors, resumed.vectors)
    assert np.allclose(np.linalg.norm(fresh.vectors, axis=1), 1.0, atol=1e-5)


def test_same_config_gives_the_same_content_hash(cifar_folder: Path, tmp_path: Path) -> None:
    a = curate(_cfg(cifar_folder, tmp_path / "s", version="1.0.0", mining=MiningConfig(k=5, mutual=True)), progress=False)
    b = curate(_cfg(cifar_folder, tmp_path / "s", version="1.0.1", mining=MiningConfig(k=5, mutual=True),
                    cache_dir=tmp_path / "fresh-cache"), progress=False)
    assert semipairs.load(a.path).manifest.content_hash == semipairs.load(b.path).manifest.content_hash


def test_tiny_random_torchvision_model_from_a_weights_file(cifar_folder: Path, tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    res = curate(_cfg(cifar_folder, tmp_path / "s", encoder=f"torchvision:resnet18/{weights}", image_size=32,
                      batch_size=100), progress=False)
    m = semipairs.load(res.path).manifest
    assert (m.encoder.kind, m.encoder.name, m.encoder.dim, m.encoder.image_size) == ("torchvision", "resnet18", 512, 32)
    assert m.encoder.weights_sha256 == sha256_file(weights) and m.encoder.pretrained == weights.name
    assert m.stats.num_pairs > 0 and m.stats.label_precision is not None


def test_ckpt_timm_and_open_clip_encoders_offline(cifar_folder: Path, tmp_path: Path) -> None:
    from semipairs.backbones import BackboneSpec, build_backbone
    from semipairs.checkpoint import backbone_checkpoint

    spec = BackboneSpec("resnet18", cifar_stem=True, image_size=32)
    model, _ = build_backbone(spec)
    torch.save(backbone_checkpoint(model, spec), tmp_path / "run.pt")
    enc = load_encoder(f"ckpt:{tmp_path / 'run.pt'}")
    assert (enc.info.kind, enc.info.name, enc.info.dim, enc.info.image_size) == ("ckpt", "resnet18", 512, 32)

    import open_clip
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "r10t.pth")
    enc = load_encoder(f"timm:resnet10t/{tmp_path / 'r10t.pth'}", image_size=32)
    assert enc.info.dim == 512 and enc.info.weights_sha256 == sha256_file(tmp_path / "r10t.pth")

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "sp-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "sp-tiny.json")
    torch.save(open_clip.create_model("sp-tiny").state_dict(), tmp_path / "tiny.pt")
    res = curate(_cfg(cifar_folder, tmp_path / "s", name="clip", encoder=f"open_clip:sp-tiny/{tmp_path / 'tiny.pt'}",
                      mining=MiningConfig(k=5, duplicate_threshold=None)), progress=False)  # random: all look alike
    m = semipairs.load(res.path).manifest
    assert (m.encoder.kind, m.encoder.name, m.encoder.dim, m.encoder.pretrained) == ("open_clip", "sp-tiny", 16, "tiny.pt")


def test_bring_your_own_embeddings(cifar_folder: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    x = rng.normal(size=(300, 8)).astype(np.float32) * 0.5 + np.eye(8, dtype=np.float32)[labels] * 3
    np.save(tmp_path / "emb.npy", x)
    res = curate(_cfg(cifar_folder, tmp_path / "s", embeddings=tmp_path / "emb.npy"), progress=False)
    m = semipairs.load(res.path).manifest
    assert m.encoder.kind == "precomputed" and m.encoder.dim == 8 and m.stats.label_precision == 1.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no images"),
        ("k", "k=300 must be smaller than the number of images"),
        ("nan", "no usable embedding: all 300 rows"),
        ("rows", "299 rows but source"),
        ("encoder", "unknown encoder spec 'magic:x'"),
        ("weights", "weights file .*missing.pt not found"),
        ("agree", "unknown encoder spec 'magic:y'"),
    ],
)
def test_bad_input_is_named_before_anything_is_published(case: str, message: str, cifar_folder: Path, tmp_path: Path) -> None:
    kw: dict = {}
    folder = cifar_folder
    if case == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "k":
        kw["mining"] = MiningConfig(k=300)
    elif case in ("nan", "rows"):
        x = np.ones((300 if case == "nan" else 299, 4), np.float32)
        x[7, 2] = np.nan
        if case == "nan":  # one NaN row is skipped and listed (test_hostile); only a matrix with no usable row fails
            x[:] = np.nan
        np.save(tmp_path / "e.npy", x)
        kw["embeddings"] = tmp_path / "e.npy"
    elif case == "encoder":
        kw["encoder"] = "magic:x"
    elif case == "agree":
        kw["agree_with"] = "magic:y"
    else:
        kw["encoder"] = f"torchvision:resnet18/{tmp_path / 'missing.pt'}"
    with pytest.raises(SemipairsError, match=message):
        curate(_cfg(folder, tmp_path / "store", **kw), progress=False)
    assert not list((tmp_path / "store").glob("pairs/*"))


def test_cli_yaml_config_flags_override_and_json(cifar_folder: Path, tmp_path: Path) -> None:
    cfg = {"source": f"imagefolder:{cifar_folder}", "encoder": "pixels", "store": str(tmp_path / "s"), "name": "y",
           "num_workers": 0, "mining": {"k": 8, "mutual": True}, "max_per_anchor": 3}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["curate", "--config", str(tmp_path / "c.yaml"), "--k", "4", "--version", "0.3.0", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    path = Path(out["path"])
    assert path == tmp_path / "s" / "y" / "0.3.0" and out["stats"]["num_pairs"] > 0
    resolved = yaml.safe_load((path / "config.yaml").read_text())
    assert resolved["mining"]["k"] == 4 and resolved["mining"]["mutual"] is True and resolved["mining"]["max_per_anchor"] == 3
    assert semipairs.load(path).manifest.mining.k == 4
    r = CliRunner().invoke(app, ["curate", "--config", str(tmp_path / "c.yaml"), "--k", "0"])
    assert r.exit_code == 2 and "--k (config key 'mining.k')" in r.output


def test_a_near_duplicate_filter_that_takes_many_candidates_says_so(cifar_folder: Path, tmp_path: Path) -> None:
    common = ["curate", "--source", f"imagefolder:{cifar_folder}", "--store", str(tmp_path / "s"), "--num-workers", "0"]
    quiet = CliRunner().invoke(app, [*common, "--name", "a"])
    loud = CliRunner().invoke(app, [*common, "--name", "b", "--duplicate-threshold", "0.6"])
    assert quiet.exit_code == loud.exit_code == 0, (quiet.output, loud.output)
    assert "near-duplicates" not in quiet.output
    dropped = semipairs.load(tmp_path / "s" / "b" / "1.0.0").manifest.mining.counts["near_duplicates"]
    assert dropped > 30 and f"note: {dropped} candidate pairs" in " ".join(loud.output.split())
    assert "raise --duplicate-threshold" in " ".join(loud.output.split())


@pytest.mark.slow
def test_torchrun_two_processes_give_the_same_pairs(cifar_folder: Path, tmp_path: Path) -> None:
    common = ["curate", "--source", f"imagefolder:{cifar_folder}", "--encoder", "pixels", "--store", str(tmp_path / "s"),
              "--k", "5", "--mutual", "--num-workers", "0", "--json"]
    one = curate(_cfg(cifar_folder, tmp_path / "s", name="single", mining=MiningConfig(k=5, mutual=True)), progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "semipairs.cli", *common, "--name", "ddp", "--config", str(_chunky(tmp_path))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, single = semipairs.load(tmp_path / "s" / "ddp").table, semipairs.load(one.path).table
    # same pairs; scores agree to float rounding (the ranks run with other thread counts)
    assert len(ddp) == len(single) > 0
    for col in ("anchor_key", "positive_key", "rank", "mutual"):
        assert ddp[col].tolist() == single[col].tolist(), col
    np.testing.assert_allclose(ddp["score"], single["score"], atol=1e-6)
    chunks = list((tmp_path / "s" / ".cache" / "embeddings").glob("*/chunk-*.npz"))
    assert len(chunks) >= 5  # the 2-process run wrote its 5 chunks of 64 beside the single run's


def _chunky(tmp_path: Path) -> Path:
    (tmp_path / "chunk.yaml").write_text("chunk_size: 64\n")
    return tmp_path / "chunk.yaml"


def test_unknown_encoder_and_missing_library_messages() -> None:
    with pytest.raises(EncoderError, match="unknown torchvision model 'nonet'"):
        load_encoder("torchvision:nonet")


def test_ivf_above_exact_max_and_l2_agree_with_exact_cosine() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32)).astype(np.float32)
    x = centers[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact, info_exact = build_index(x, IndexConfig())
    ivf, info_ivf = build_index(x, IndexConfig(exact_max=1000, nprobe=8))
    l2, info_l2 = build_index(x, IndexConfig(metric="l2"))
    assert info_exact.factory == "Flat" and info_ivf.factory == "IVF51,Flat" and info_ivf.nprobe == 8
    s_e, i_e = search(exact, x, 5, 512, progress=False)
    _, i_v = search(ivf, x, 5, 512, progress=False)
    s_l, i_l = search(l2, x, 5, 512, progress=False)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i_e, i_v)])
    assert recall > 0.9, recall
    assert (i_l[:, 0] == i_e[:, 0]).mean() > 0.99  # same nearest neighbour on unit vectors
    np.testing.assert_allclose(s_l, -(2 - 2 * s_e), atol=1e-4)  # score = -squared L2 distance
