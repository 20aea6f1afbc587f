"""`semipairs.load("hf://...")` through huggingface_hub's real snapshot_download, offline, from a
Hugging Face cache laid out as the library writes it (push/pull against a loopback Hub: test_hub.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import semipairs
from semipairs.errors import StoreError
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(cifar_folder: Path, tmp_path: Path, monkeypatch) -> Path:
    src = f"imagefolder:{cifar_folder}"
    version = pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv"), tmp_path / "store", "hubbed", "1.0.0",
                   progress=False)
    cache = tmp_path / "hf-cache"
    repo = cache / "datasets--someone--cifar-pairs"
    shutil.copytree(version, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v1.0.0").write_text(COMMIT)
    other = cache / "datasets--someone--not-pairs"
    (other / "snapshots" / COMMIT).mkdir(parents=True)
    (other / "snapshots" / COMMIT / "data.csv").write_text("a,b\n")
    (other / "refs").mkdir()
    (other / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / COMMIT


def test_load_by_hub_id_offline_from_the_cache(hub_cache: Path) -> None:
    for uri in ("hf://someone/cifar-pairs", "hf://someone/cifar-pairs@v1.0.0", f"hf://someone/cifar-pairs@{COMMIT}"):
        ds = semipairs.load(uri)
        assert ds.path == hub_cache and ds.manifest.stats.num_pairs == 300


def test_hub_errors_are_clear(hub_cache: Path) -> None:
    with pytest.raises(StoreError, match="not in the local Hugging Face cache"):
        semipairs.load("hf://someone/cifar-pairs@v9.9.9")
    with pytest.raises(StoreError, match="is not a semipairs dataset"):
        semipairs.load("hf://someone/not-pairs")
    with pytest.raises(StoreError, match="is not a Hub id"):
        semipairs.load("hf://just-a-name")
    shard = hub_cache / "data" / "pairs-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1000])  # a cut-off download is never taken as a dataset
    with pytest.raises(StoreError, match="do not verify: data/pairs-000000.tar"):
        semipairs.load("hf://someone/cifar-pairs")


def test_train_takes_pairs_by_hub_id(hub_cache: Path, cifar_folder: Path, tmp_path: Path) -> None:
    from training.trainer import TrainConfig, train

    m = train(TrainConfig(method="simsiam", data=f"imagefolder:{cifar_folder}", pairs="hf://someone/cifar-pairs",
                          out=tmp_path / "run", epochs=1, max_steps=2, batch_size=32, image_size=16, num_workers=0),
              progress=False)
    assert m["epochs"][0]["pair_samples"] > 0
