"""Image sources, the manifest model and the CLI surface."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

import semipairs
from semipairs.cli import app
from semipairs.errors import FormatVersionError, ManifestError, SourceError
from semipairs.manifest import parse_manifest, semver_key
from semipairs.sources import open_source
from tests.conftest import ring_pairs


def test_digits_source_is_bundled_and_labelled() -> None:
    src = open_source("digits")
    assert len(src) == 1797 and src.classes == [str(i) for i in range(10)]
    item = src.read(5)
    assert item.key == "0005" and item.ext == "png" and item.label == 5
    img = Image.open(io.BytesIO(item.data))
    assert img.size == (8, 8) and img.mode == "L"
    assert src.labels()[:10] == list(range(10))


def test_imagefolder_keys_and_labels(cifar_folder: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    assert src.classes == ["airplane", "cat", "ship"]
    assert src.keys()[:2] == ["airplane/0000", "airplane/0001"] and len(src) == 300
    assert src.read(150).key == "cat/0050" and src.read(150).label == 1
    assert src.fingerprint() == open_source(f"imagefolder:{cifar_folder}").fingerprint()


def test_webdataset_source_reads_labels_and_bytes(cifar_folder: Path, tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "src-000.tar")) as w0, wds.TarWriter(str(tmp_path / "src-001.tar")) as w1:
        for i, path in enumerate(sorted(cifar_folder.rglob("*.jpg"))[:40]):
            (w0 if i < 20 else w1).write({"__key__": f"s{i:03d}", "jpg": path.read_bytes(), "cls": str(i % 3)})
    src = open_source(f"webdataset:{tmp_path}/src-{{000..001}}.tar")
    assert len(src) == 40 and src.keys()[:2] == ["s000", "s001"] and src.classes == ["0", "1", "2"]
    item = src.read(25)
    assert item.label == 25 % 3 and item.data == sorted(cifar_folder.rglob("*.jpg"))[25].read_bytes()
    with pytest.raises(SourceError, match="matches no shard"):
        open_source(f"webdataset:{tmp_path}/nothing-*.tar")


def test_shared_cifar_tar_reads_as_a_webdataset_source(tmp_path: Path) -> None:
    from tests.conftest import CIFAR_DIR

    tar = CIFAR_DIR / "cifar10-test.tar"
    if not tar.is_file():
        from tests.conftest import extract_cifar

        extract_cifar(tmp_path)  # fails under CI, skips elsewhere, with the same message
    src = open_source(f"webdataset:{tar}")
    assert len(src) == 10_000 and src.keys()[0] == "test/airplane/0000" and not src.has_labels
    assert Image.open(io.BytesIO(src.read(0).data)).size == (32, 32)


def test_cifar10_python_folder_and_safe_unpickling(cifar_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    imgs = [np.asarray(Image.open(p)) for p in sorted(cifar_folder.rglob("*.jpg"))[:12]]
    data = np.stack(imgs).transpose(0, 3, 1, 2).reshape(12, -1)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": list(range(12))}, f)
    src = open_source(f"cifar10:{tmp_path}:test")
    assert len(src) == 12 and src.keys()[3] == "test/00003" and src.read(3).label == 3
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(src.read(3).data))), imgs[3])  # lossless PNG

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(SourceError, match="refusing to load builtins.print"):
        open_source(f"cifar10:{tmp_path}:test")
    with pytest.raises(SourceError, match="lacks CIFAR-10 batch files"):
        open_source(f"cifar10:{tmp_path}:train")


def test_unknown_source_spec() -> None:
    with pytest.raises(SourceError, match="unknown source spec 'nope:x'"):
        open_source("nope:x")


def _manifest_dict(tmp_path: Path, cifar_folder: Path) -> dict:
    from semipairs.pack import pack

    pairs = ring_pairs(open_source(f"imagefolder:{cifar_folder}").keys(), tmp_path / "p.csv")
    path = pack(f"imagefolder:{cifar_folder}", pairs, tmp_path / "s", "m", "1.0.0", progress=False)
    return json.loads((path / "semipairs.json").read_text())


def test_manifest_validation_names_the_field(tmp_path: Path, cifar_folder: Path) -> None:
    raw = _manifest_dict(tmp_path, cifar_folder)
    assert parse_manifest(raw).stats.num_pairs == 300
    bad = dict(raw, stats=dict(raw["stats"], num_pairs=-1))
    with pytest.raises(ManifestError, match="field 'stats.num_pairs'"):
        parse_manifest(bad)
    # a field this release does not know (a newer writer of format 1) is tolerated, not refused (issue 24)
    assert parse_manifest(dict(raw, surprise=1)).stats.num_pairs == 300
    with pytest.raises(ManifestError, match="field 'version'.*not semver"):
        parse_manifest(dict(raw, version="v1"))
    with pytest.raises(FormatVersionError, match="'format' is 'other'"):
        parse_manifest(dict(raw, format="other"))
    with pytest.raises(ManifestError, match="must be relative"):
        parse_manifest(dict(raw, files=[dict(raw["files"][0], path="../../etc/passwd")]))


def test_semver_order() -> None:
    versions = ["1.10.0", "1.9.0", "1.0.0-rc.1", "1.0.0", "0.2.0"]
    assert sorted(versions, key=semver_key) == ["0.2.0", "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0"]


def test_cli_pack_info_verify_json(cifar_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    pairs = ring_pairs(open_source(f"imagefolder:{cifar_folder}").keys(), tmp_path / "p.csv")
    args = ["pack", "--source", f"imagefolder:{cifar_folder}", "--pairs", str(pairs), "--store", str(tmp_path / "s"),
            "--name", "cli", "--version", "2.0.0", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stats"]["num_pairs"] == 300
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["info", str(tmp_path / "s" / "cli"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == "2.0.0"
    r = runner.invoke(app, ["verify", str(tmp_path / "s" / "cli"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    r = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no such pair dataset" in r.output


@pytest.mark.parametrize("command", ["pack", "info", "verify", "quickstart", "curate", "train", "eval"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    r = CliRunner().invoke(app, [command, "--help"])
    assert r.exit_code == 0 and "Example: semipairs " + command in r.output


def test_import_semipairs_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, semipairs, semipairs.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert semipairs.FORMAT_VERSION == 1
