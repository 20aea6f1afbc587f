"""The fast training path: images decoded once (memory-mapped cache), batched augmentation with the
per-image recipe's distributions, bf16 precision chosen from the CPU's flags, pair modes on decoded rows."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from semipairs import precision
from semipairs.dataset import load as semipairs_load
from semipairs.decoded import decode_source
from semipairs.pack import pack
from semipairs.precision import Precision, candidates, cpu_has_native_bf16, padding_tap_modules, resolve_precision
from semipairs.sources import open_source
from tests.conftest import ring_pairs
from training.augment import moco_v2
from training.batch_augment import BatchRecipe, _blend, _gray, _hue, crop_boxes, gaussian_blur, resized_crop
from training.decoded_batches import PAIR, SAME_IMAGE, PairRows, plan_epoch
from training.losses import info_nce
from training.streamed import SePPViews
from training.trainer import TrainConfig, build_model, train


@pytest.fixture()
def folder(cifar_folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "images"
    shutil.copytree(cifar_folder, dest)
    return dest


def test_decode_once_matches_pil_and_is_memory_mapped_on_later_runs(folder: Path, tmp_path: Path) -> None:
    (folder / "cat" / "9999.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # unreadable: skipped, listed, row zero
    src = open_source(f"imagefolder:{folder}")
    root = tmp_path / "cache"
    dec = decode_source(src, 32, root=root)
    keys = src.keys()
    bad = keys.index("cat/9999")
    assert dec.images.shape == (301, 32, 32, 3) and dec.images.dtype == np.uint8
    assert not dec.ok[bad] and dec.ok.sum() == 300 and not dec.images[bad].any()
    assert [s.key for s in dec.skipped] == ["cat/9999"] and "UnidentifiedImageError" in dec.skipped[0].reason
    for i in (0, 150, 300):
        assert np.array_equal(dec.images[i], np.asarray(src.read(i).image()))  # 32 px source: decoded as is
    again = decode_source(src, 32, root=root)
    assert isinstance(again.images, np.memmap) and again.path == dec.path
    assert decode_source(src, 16, root=root).path != dec.path  # the size is part of the key
    assert decode_source(src, 32, root=root, budget_bytes=301 * 32 * 32 * 3 - 1) is None  # over budget: stream
    assert not [p for p in dec.path.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_large_images_are_decoded_at_the_evaluation_geometry(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(tmp_path / "a" / "wide.png")
    src = open_source(f"imagefolder:{tmp_path}")
    dec = decode_source(src, 96, root=tmp_path / "cache")
    expect = v2.Compose([v2.ToImage(), v2.Resize(96, antialias=True), v2.CenterCrop(96)])(src.read(0).image())
    assert dec.images.shape == (1, 96, 96, 3)
    diff = np.abs(dec.images[0].astype(int) - expect.permute(1, 2, 0).numpy().astype(int))
    assert diff.mean() < 2.0  # same geometry; resamplers differ by rounding only


def test_crop_sampler_draws_torchvisions_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for h, w in ((32, 32), (32, 64)):
        boxes = crop_boxes(20000, h, w, generator=g)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        img = torch.zeros(3, h, w)
        ref = torch.tensor([v2.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3])[2:] for _ in range(20000)],
                           dtype=torch.float)
        for ours, theirs in ((bw * bh / (h * w), ref[:, 0] * ref[:, 1] / (h * w)), (bw / bh, ref[:, 1] / ref[:, 0])):
            q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
            assert torch.allclose(ours.quantile(q), theirs.quantile(q), atol=0.03), (ours.quantile(q), theirs.quantile(q))


def test_batched_ops_equal_torchvisions_per_image_ops() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 20, 20, generator=g)
    x[0] = 0.5  # grey image: hue undefined, must stay put
    f = torch.linspace(0.6, 1.4, 6)
    hue = torch.linspace(-0.1, 0.1, 6)
    for i in range(6):
        assert torch.allclose(_hue(x, hue)[i], TF.adjust_hue(x[i], float(hue[i])), atol=1e-5)
        assert torch.allclose(_blend(x, _gray(x), f.view(-1, 1, 1, 1))[i], TF.adjust_saturation(x[i], float(f[i])), atol=1e-5)
        contrast = _blend(x, _gray(x).mean((-3, -2, -1), keepdim=True), f.view(-1, 1, 1, 1))[i]
        assert torch.allclose(contrast, TF.adjust_contrast(x[i], float(f[i])), atol=1e-5)
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.1, 1.2])
    for i in range(6):
        assert torch.allclose(gaussian_blur(x, sigma, 5)[i], TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2), atol=1e-5)
    boxes = torch.tensor([[2.0, 3.0, 14.0, 19.0]] * 6)
    flip = torch.tensor([False, True] * 3)
    out = resized_crop(x, boxes, 16, flip)
    ref = TF.resized_crop(x[2], 3, 2, 16, 12, [16, 16], antialias=False)
    assert torch.allclose(out[2], ref, atol=1e-5) and torch.allclose(out[3], TF.horizontal_flip(TF.resized_crop(
        x[3], 3, 2, 16, 12, [16, 16], antialias=False)), atol=1e-5)
    shrink = resized_crop(x, torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 6), 8, flip)  # a crop larger than the output
    smooth = TF.resized_crop(x[2], 0, 0, 20, 20, [8, 8], antialias=True)  # area-averaged, as roi_align averages
    assert shrink.shape == (6, 3, 8, 8) and (shrink[2] - smooth).abs().mean() < 0.05
    assert torch.allclose(shrink[3], resized_crop(x[3:4], torch.tensor([[0.0, 0.0, 20.0, 20.0]]), 8)[0].flip(-1))


def test_batched_views_have_the_statistics_of_the_pil_recipe(cifar_folder: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    images = [src.read(i).image() for i in range(300)]
    arr = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
    torch.manual_seed(0)
    pil = torch.stack([moco_v2(32)(im) for im in images * 4])
    batched = torch.cat([BatchRecipe(32)(arr, torch.Generator().manual_seed(s)) for s in range(4)])
    for stat in (lambda t: t.mean((0, 2, 3)), lambda t: t.std((0, 2, 3))):
        assert torch.allclose(stat(batched), stat(pil), atol=0.05), (stat(batched), stat(pil))
    # grayscale views: equal channels after un-normalising; ~20% in both recipes
    unnorm = lambda t: t * torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1) + torch.tensor(  # noqa: E731
        [0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    share = lambda t: ((unnorm(t)[:, 0] - unnorm(t)[:, 1]).abs().amax((1, 2)) < 1e-3).float().mean()  # noqa: E731
    assert abs(float(share(batched)) - 0.2) < 0.04 and abs(float(share(pil)) - 0.2) < 0.04, (share(batched), share(pil))


def test_auto_precision_reads_the_cpu_flags(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "yes", tmp_path / "no"
    with_bf16.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    # native means advertised and dispatched: ATEN_CPU_CAPABILITY=avx2 runs a native-bf16 CPU as the AVX2 kind
    assert resolve_precision("auto", "cpu").name == ("bf16" if precision._native_bf16("cpu") else "fp32")
    assert resolve_precision("bf16", "cpu").bf16 and resolve_precision("fp32", "cpu").name == "fp32"
    with pytest.raises(ValueError, match="precision 'half'"):
        resolve_precision("half", "cpu")


def test_bf16_steps_track_fp32_steps_and_losses_stay_fp32() -> None:
    """Two MoCo steps from the same seed. bf16 keeps 8 mantissa bits (relative error ~0.4% per op);
    through a ResNet-18 forward the loss (about ln(queue + 1) = 4.2) moves by well under 2%, so 0.1 absolute."""
    x1, x2 = torch.rand(2, 8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    losses = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        model, _ = build_model(TrainConfig(method="moco", data="digits", out=Path("unused"), queue_size=64,
                                            image_size=16))
        # contiguous: at 16 px a convolution sees a 1x1 map; layer4.0.conv1 in fp32 (tests/test_precision.py)
        prec = Precision(name, "cpu", fp32_modules=padding_tap_modules(model, lambda m=model: m(x1, x2)))
        model = prec.prepare_model(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
        losses[name] = []
        for _ in range(2):
            with prec.autocast():
                loss, _, keys = model(prec.prepare_input(x1), prec.prepare_input(x2))
            assert loss.dtype == torch.float32 and keys.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.enqueue(keys)
            losses[name].append(float(loss.detach()))
    assert np.allclose(losses["bf16"], losses["fp32"], atol=0.1), losses
    assert all(math.isfinite(v) for v in losses["bf16"])


def test_weighted_info_nce_is_a_weighted_mean() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    each = torch.stack([info_nce(q[i:i + 1], k[i:i + 1], queue) for i in range(4)])
    w = torch.tensor([1.0, 0.5, 0.0, 2.0])
    assert torch.allclose(info_nce(q, k, queue, weights=w), (each * w).sum() / w.sum())
    assert torch.allclose(info_nce(q, k, queue), each.mean())


def test_epoch_plans_extra_and_swap_modes() -> None:
    ok = np.ones(100, bool)
    ok[95] = False  # unreadable: never planned
    pairs = PairRows(np.arange(0, 40), np.arange(40, 80), np.arange(40))
    extra = list(plan_epoch(ok, pairs, seed=0, epoch=0, rank=0, world=1, batch_size=10, steps=14, mode="extra"))
    kind = np.concatenate([b.kind for b in extra])
    assert len(extra) == 14 and len(kind) == 139 and (kind == PAIR).sum() == 40
    for b in extra:
        same = b.kind == SAME_IMAGE
        assert (b.rows_a[same] == b.rows_b[same]).all() and 95 not in b.rows_a
        assert ((b.rows_b[~same] - b.rows_a[~same]) == 40).all()
    swap = list(plan_epoch(ok, pairs, seed=0, epoch=0, rank=0, world=1, batch_size=9, steps=11, mode="swap", swap_prob=1.0))
    a, b_, k = (np.concatenate([getattr(x, f) for x in swap]) for f in ("rows_a", "rows_b", "kind"))
    assert len(a) == 99 and (k == PAIR).sum() == 80  # every image with a partner swapped, none without
    assert (np.abs(b_[k == PAIR] - a[k == PAIR]) == 40).all() and (a[k == SAME_IMAGE] >= 80).all()
    ranks = [list(plan_epoch(ok, pairs, seed=0, epoch=1, rank=r, world=2, batch_size=10, steps=6, mode="extra"))
             for r in (0, 1)]
    seen = [{(int(k), int(i)) for b in plan for k, i in zip(b.kind, b.index)} for plan in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 6 and len(seen[0]) == len(seen[1]) == 60 and not seen[0] & seen[1]


@pytest.mark.slow
def test_trainer_defaults_to_the_decoded_path_and_keeps_the_streamed_one(folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{folder}"
    ref = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=3), tmp_path / "s", "ref", "1.0.0",
               layout="reference", progress=False)
    base = dict(method="moco", data=src, pairs=str(ref), epochs=1, batch_size=32, image_size=16, queue_size=64,
                num_workers=0, seed=0)
    fast = train(TrainConfig(out=tmp_path / "fast", **base), progress=False)
    slow = train(TrainConfig(out=tmp_path / "slow", decode_budget_gb=0, **base), progress=False)
    assert fast["data_path"] == "DecodedData" and slow["data_path"] == "StreamedData"
    # auto: the faster option that agreed; fp32 in one of its layouts without native bf16
    assert fast["precision"] in {c.label for c in candidates("auto", "cpu")}
    assert fast["precision"].startswith("fp32") or precision._native_bf16("cpu")
    for m in (fast, slow):
        assert len(m["epochs"][0]["step_losses"]) == 18 and m["epochs"][0]["pair_samples"] > 0
    swap = train(TrainConfig(out=tmp_path / "swap", pair_mode="swap", swap_prob=1.0, pair_weight=0.5, **base), progress=False)
    assert len(swap["epochs"][0]["step_losses"]) == 300 // 32 and swap["epochs"][0]["pair_samples"] == 9 * 32
    warm = train(TrainConfig(out=tmp_path / "warm", pair_warmup=0.5, max_steps=10, **base), progress=False)
    assert warm["epochs"][0]["pair_samples"] > 0  # pairs joined after the warm-up half
    with pytest.raises(Exception, match="need the decoded path"):
        train(TrainConfig(out=tmp_path / "no", pair_mode="swap", decode_budget_gb=0, **base), progress=False)
    assert os.environ["SEMIPAIRS_CACHE"]  # the suite never writes decoded arrays into ~/.cache


def test_images_that_turn_unreadable_after_packing_are_skipped_and_counted_on_both_paths(folder: Path,
                                                                                        tmp_path: Path) -> None:
    """One skip policy: the streamed views pass over them (and the reference pairs touching them), the decoded
    path leaves them out; both count them in every epoch's metrics, and the run says so in a note."""
    src = f"imagefolder:{folder}"
    keys = open_source(src).keys()
    ref = pack(src, ring_pairs(keys, tmp_path / "p.csv"), tmp_path / "s", "ref", "1.0.0", layout="reference",
               progress=False)
    bad = [keys[5], keys[50], keys[150]]  # no two adjacent in the ring: each spoils 2 pairs
    for k in bad:
        next(folder.glob(f"{k}.*")).write_bytes(b"\xff\xd8 cut off")
    views = SePPViews(open_source(src), lambda im: torch.zeros(1), semipairs_load(ref), pair_ratio=1.0)
    samples = list(views)
    kinds = [int(info["kind"]) for _, _, info in samples]
    assert kinds.count(SAME_IMAGE) == len(keys) - 3 and kinds.count(PAIR) == len(keys) - 6
    assert sum(int(info["skipped"]) for _, _, info in samples) == 3 + 6  # the 3 images, then 2 reads each in pairs

    notes: list[str] = []
    base = dict(method="moco", data=src, epochs=1, batch_size=32, image_size=16, queue_size=64, num_workers=0, seed=0,
                precision="fp32")
    fast = train(TrainConfig(out=tmp_path / "fast", **base), progress=False, log=notes.append)
    slow = train(TrainConfig(out=tmp_path / "slow", decode_budget_gb=0, **base), progress=False)
    assert [e["skipped_images"] for e in fast["epochs"]] == [3]
    said = [n for n in notes if "unreadable" in n]
    assert len(said) == 1 and said[0].startswith(f"3 unreadable image(s) of {src} left out (first: {bad[0]}: ")
    # the streamed path counts what the epoch's samples passed over: every one here (none sits in the unused tail)
    assert [e["skipped_images"] for e in slow["epochs"]] == [3]
