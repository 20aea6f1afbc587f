"""Hostile and careless inputs: content survives, nothing is half-written, every expected failure is one
``error:`` line that names the thing, with exit code 2 and no traceback."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import semipairs
from curation.embed import embed_source
from curation.encoders import EncoderError, load_encoder
from curation.pipeline import CurateConfig, curate
from semipairs.cli import app
from semipairs.errors import ShardReadError, SourceError, StoreError
from semipairs.pack import pack
from semipairs.sources import open_source


@pytest.fixture()
def photos(cifar_folder: Path, tmp_path: Path) -> Path:
    """40 real JPEGs in two classes, a blank white JPEG and a 16-bit grey ramp PNG."""
    root = tmp_path / "photos"
    for cls in ("airplane", "cat"):
        (root / cls).mkdir(parents=True)
        for f in sorted((cifar_folder / cls).glob("*.jpg"))[:20]:
            shutil.copy(f, root / cls / f.name)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(root / "cat" / "blank.jpg", quality=90)
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(root / "airplane" / "ramp16.png")
    return root


def _ramp() -> np.ndarray:
    return (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16) / 257.0


def test_a_16_bit_png_keeps_its_content_when_published_as_jpeg(photos: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{photos}"
    csv = tmp_path / "p.csv"
    pd.DataFrame({"anchor_key": ["airplane/0000", "airplane/ramp16"],
                  "positive_key": ["airplane/0001", "airplane/0002"]}).to_csv(csv, index=False)
    ds = semipairs.load(pack(src, csv, tmp_path / "s", "ramp", "1.0.0", progress=False))
    anchor = [a for a, _, m in ds.to_torch() if m["anchor_key"] == "airplane/ramp16"][0]
    got = np.asarray(anchor.convert("L"), dtype=float)
    assert np.abs(got - _ramp()).mean() < 3.0  # was a solid white image (error 107/255)
    assert ds.manifest.stats.reencoded == 1


def test_constant_and_16_bit_images_never_stop_curation(photos: Path, tmp_path: Path) -> None:
    res = curate(CurateConfig(source=f"imagefolder:{photos}", encoder="pixels", store=tmp_path / "s", name="p", audit=False,
                              mining={"k": 3}), progress=False)
    m = semipairs.load(res.path).manifest
    reasons = {s.key: s.reason for s in m.source.skipped}
    assert list(reasons) == ["cat/blank"] and "all zeros" in reasons["cat/blank"]
    keys = set(semipairs.load(res.path).table["anchor_key"]) | set(semipairs.load(res.path).table["positive_key"])
    assert "cat/blank" not in keys and m.source.num_images == 41


def test_huge_finite_embeddings_normalise_without_collapsing(photos: Path, tmp_path: Path) -> None:
    src = open_source(f"imagefolder:{photos}")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(len(src), 8)) * 1e37).astype(np.float32)
    x[5] = np.nan
    np.save(tmp_path / "e.npy", x)
    res = curate(CurateConfig(source=f"imagefolder:{photos}", embeddings=tmp_path / "e.npy", store=tmp_path / "s", name="e",
                              layout="reference", audit=False, mining={"k": 3}), progress=False)
    ds = semipairs.load(res.path)
    scores = ds.table["score"].to_numpy()
    assert np.isfinite(scores).all() and (np.abs(scores) > 0.01).mean() > 0.9 and scores.max() <= 1.0001
    assert [s.key for s in ds.manifest.source.skipped] == [src.keys()[5]]


def test_random_weights_must_be_asked_for_and_are_seeded() -> None:
    for spec in ("torchvision:resnet18", "open_clip:RN50"):
        with pytest.raises(EncoderError, match="names no weights"):
            load_encoder(spec)
    a, b, c = (load_encoder(s, image_size=32) for s in ("torchvision:resnet18/random", "torchvision:resnet18/random-0",
                                                          "torchvision:resnet18/random-1"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x)) and not torch.equal(a.model(x), c.model(x))
    assert a.fingerprint != c.fingerprint and a.info.pretrained == "random-0"
    with pytest.raises(EncoderError, match="random-SEED"):
        load_encoder("torchvision:resnet18/random-x")


def test_a_pickled_weights_file_is_refused_by_name(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"fc.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(EncoderError, match=r"evil\.pt is not a plain tensor state dict"):
        load_encoder(f"torchvision:resnet18/{tmp_path / 'evil.pt'}")


def _hostile_tar(cifar_folder: Path, path: Path) -> None:
    jpgs = sorted(cifar_folder.rglob("*.jpg"))
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(12):
            add(f"s{i:02d}.jpg", jpgs[i].read_bytes())
            add(f"s{i:02d}.cls", str(i % 2).encode())
        for name in ("../evil.jpg", "/tmp/abs.jpg"):
            add(name, jpgs[20].read_bytes())
            add(name.replace(".jpg", ".cls"), b"0")
        for name, kind in (("sym.jpg", tarfile.SYMTYPE), ("hard.jpg", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "s00.jpg"
            tar.addfile(info)
            add(name.replace(".jpg", ".cls"), b"1")


def test_unsafe_and_link_members_of_a_source_tar_are_skipped_and_listed(cifar_folder: Path, tmp_path: Path) -> None:
    _hostile_tar(cifar_folder, tmp_path / "src.tar")
    src = open_source(f"webdataset:{tmp_path / 'src.tar'}")
    assert src.classes == ["0", "1"] and len(src) == 16
    res = curate(CurateConfig(source=src.spec, encoder="pixels", store=tmp_path / "s", name="w", audit=False,
                              mining={"k": 2}), progress=False)
    skipped = {s.key: s.reason for s in semipairs.load(res.path).manifest.source.skipped}
    assert set(skipped) == {"../evil", "/tmp/abs", "sym", "hard"}
    assert "unsafe tar member name" in skipped["../evil"] and "symbolic link" in skipped["sym"]
    assert "hard link" in skipped["hard"]
    assert not (tmp_path / "evil.jpg").exists() and not Path("/tmp/abs.jpg").exists()


def test_two_writers_of_one_embedding_cache_both_finish(cifar_folder: Path, tmp_path: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    enc = load_encoder("pixels:8")
    results, errors = [], []

    def run() -> None:
        try:
            results.append(embed_source(src, enc, tmp_path / "cache", batch_size=16, num_workers=0, chunk_size=32,
                                        progress=False))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure of either writer
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert np.array_equal(results[0].vectors, results[1].vectors) and results[0].ok.all()
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no temp file left behind


def test_audit_thumbnails_decode_reduced(tmp_path: Path) -> None:
    """A 24-megapixel JPEG: a full decode is 72 MB; the thumbnail decode must stay far below that."""
    big = tmp_path / "big.jpg"
    Image.effect_noise((6000, 4000), 40).convert("RGB").save(big, quality=80)
    code = ("import resource, sys; from semipairs.sources.base import thumbnail; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"im = thumbnail(open({str(big)!r}, 'rb').read(), 128); "
            "print(im.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(")")
    assert "128" in out[0] and int(out[1]) < 30, out  # MB of peak RSS growth


def test_to_hf_on_a_truncated_shard_names_it(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    from tests.conftest import ring_pairs

    path = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv"), tmp_path / "s", "t", "1.0.0",
                shard_size=100, progress=False)
    shard = sorted((path / "data").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ShardReadError, match=shard.name):
        semipairs.load(path).to_hf()


def test_verify_store_name_resolves_the_newest_version_and_reports_its_problem(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    from tests.conftest import ring_pairs

    csv = ring_pairs(open_source(src).keys(), tmp_path / "p.csv")
    pack(src, csv, tmp_path / "s", "v", "1.0.0", layout="reference", progress=False)
    newest = pack(src, csv, tmp_path / "s", "v", "1.1.0", layout="reference", progress=False)
    runner = CliRunner()
    r = runner.invoke(app, ["verify", str(tmp_path / "s" / "v")])
    assert r.exit_code == 0 and "1.1.0" in r.output
    manifest = json.loads((newest / "semipairs.json").read_text())
    (newest / "semipairs.json").write_text(json.dumps(manifest | {"format_version": 99}))
    r = runner.invoke(app, ["verify", str(tmp_path / "s" / "v")])
    assert r.exit_code != 0 and "format_version 99" in r.output and "1.1.0" in r.output and "Traceback" not in r.output
    (newest / "semipairs.json").write_text("{not json")
    r = runner.invoke(app, ["verify", str(tmp_path / "s" / "v")])
    assert r.exit_code != 0 and "semipairs.json" in r.output and "Traceback" not in r.output


def test_a_file_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    bad = os.fsencode(tmp_path / "a") + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        Image.new("RGB", (8, 8)).save(f, format="PNG")
    with pytest.raises(SourceError, match=r"caf\\xe9"):
        open_source(f"imagefolder:{tmp_path}")


def test_a_store_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    """A store under a regular file: every write fails (as in a read-only store, which root ignores)."""
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(app, ["curate", "--source", "digits", "--store", str(tmp_path / "file" / "store"), "--name", "d",
                                 "--k", "3", "--json"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "file/store" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    """Disk full, simulated: the write fails mid-way; the old file stays whole, no temp file remains."""
    from semipairs.atomic import atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(StoreError, match=r"metrics\.json: write failed \(No space left on device\)"), \
            atomic_write(target, "w") as f:
        f.write("partial")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


CASES = [
    # (argv, text the error line must name)
    (["curate", "--source", "imagefolder:nope", "--store", "s", "--name", "a"], "nope"),
    (["curate", "--source", "digits", "--encoder", "pixel", "--store", "s", "--name", "a"], "'pixel'"),
    (["curate", "--source", "digits", "--encoder", "torchvison:resnet18", "--store", "s", "--name", "a"], "torchvison"),
    (["curate", "--source", "digits", "--encoder", "pixels:abc", "--store", "s", "--name", "a"], "'abc'"),
    (["curate", "--source", "digits", "--encoder", "torchvision:resnet18", "--store", "s", "--name", "a"], "names no weights"),
    (["curate", "--source", "digits", "--encoder", "torchvision:resnet18/DEFAULT", "--store", "s", "--name", "a"],
     "cannot fetch the pretrained weights"),
    (["curate", "--source", "digits", "--encoder", "[/bold]x", "--store", "s", "--name", "a"], "[/bold]x"),
    (["curate", "--source", "digits", "--store", "s", "--name", "../evil"], "'../evil'"),
    (["curate", "--source", "digits", "--store", "s", "--name", "a", "--version", "1.0"], "'1.0'"),
    (["curate", "--source", "digits", "--store", "s", "--name", "a", "--version", "../../x"], "'../../x'"),
    (["curate", "--source", "digits", "--store", "s", "--name", "a", "--config", "missing.yaml"], "missing.yaml"),
    (["pack", "--source", "digits", "--pairs", "nope.csv", "--store", "s", "--name", "a"], "nope.csv"),
    (["info", "."], "no published version"),
    (["info", "nope/1.0.0"], "nope"),
    (["verify", "nope/1.0.0"], "nope"),
    (["audit", "nope"], "nope"),
    (["push", "nope/1.0.0", "me/x"], "nope"),
    (["train", "--method", "mocov2", "--out", "r"], "--method"),
    (["train", "--out", "r"], "--data"),
    (["train", "--data", "digits", "--out", "r", "--pair-mode", "nope"], "--pair-mode"),
    (["train", "--data", "digits", "--out", "r", "--config", "missing.yaml"], "missing.yaml"),
    (["train", "--data", "imagefolder:nope", "--out", "r"], "nope"),
    (["eval", "--checkpoint", "nope.pt", "--train", "digits", "--test", "digits"], "nope.pt"),
    (["eval", "--checkpoint", "nope.pt", "--train", "digits", "--test", "digits", "--precision", "half"], "--precision"),
    (["refine", "--checkpoint", "nope.pt", "--data", "digits", "--out", "r"], "nope.pt"),
    (["refine", "--checkpoint", "nope.pt", "--data", "digits", "--out", "r", "--fanouts", "a,b"], "--fanouts"),
    (["quickstart", "--source", "imagefolder:nope", "--out", "q"], "nope"),
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_every_command_fails_with_one_error_line(argv: list[str], names: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, argv)
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("Downloading")]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], r.output
    assert "Traceback" not in r.output
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)  # nothing created


def test_debug_env_adds_the_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMIPAIRS_DEBUG", "1")
    r = CliRunner().invoke(app, ["info", "."])
    assert r.exit_code == 2 and "Traceback" in r.output and "error: " in r.output


def test_version_flag() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"semipairs {semipairs.__version__}"
