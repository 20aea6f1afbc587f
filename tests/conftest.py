"""Shared fixtures: small real data from ../shared/data/cifar10, extracted into temp dirs."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (pytest -n 2): two torch processes each with a thread per core fight over the
    # cores and each slows several-fold, so each worker (and every subprocess it starts) keeps one thread.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path(os.environ.get("SEMIPAIRS_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))
CLASSES = ("airplane", "cat", "ship")


def extract_cifar(dest: Path, split: str = "test", classes=CLASSES, per_class: int = 100) -> Path:
    """Extract ``per_class`` JPEGs of each class from the shared tar into ``dest/<class>/NNNN.jpg``."""
    tar_path = CIFAR_DIR / f"cifar10-{split}.tar"
    if not tar_path.is_file():
        message = f"real CIFAR-10 data not found at {tar_path} (set SEMIPAIRS_CIFAR10)"
        if os.environ.get("CI"):  # in CI the data must be there: never let a skip hide the suite
            pytest.fail(message)
        pytest.skip(message)
    wanted = {f"{split}/{c}/{i:04d}.jpg" for c in classes for i in range(per_class)}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if m.name in wanted:
                _, cls, fname = m.name.split("/")
                (dest / cls).mkdir(parents=True, exist_ok=True)
                (dest / cls / fname).write_bytes(tar.extractfile(m).read())
    return dest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> None:
    """Decoded-image caches of the suite go to a temp dir, never to the user's ~/.cache (subprocesses inherit it)."""
    os.environ["SEMIPAIRS_CACHE"] = str(tmp_path_factory.mktemp("semipairs-cache"))


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> Path:
    """300 real CIFAR-10 test JPEGs (3 classes x 100) as an image folder."""
    return extract_cifar(tmp_path_factory.mktemp("cifar") / "images")


def ring_pairs(keys: list[str], path: Path, step: int = 1) -> Path:
    """A pair list linking each key to the one ``step`` further on (wrapping), with scores."""
    n = len(keys)
    df = pd.DataFrame(
        {
            "anchor_key": keys,
            "positive_key": [keys[(i + step) % n] for i in range(n)],
            "score": [round(1.0 - i / (2 * n), 4) for i in range(n)],
        }
    )
    df.to_csv(path, index=False)
    return path


def labelled_pairs(folder: Path, tmp: Path, n_pairs: int = 240, precision: float = 0.75, seed: int = 0) -> Path:
    """An embedded pair set of ``folder``'s real images (``cifar_folder``): ``n_pairs`` pairs, ``precision`` of
    them of the same class, the right ones scoring higher on average (as mined pairs do). Its version dir."""
    import numpy as np

    from semipairs.pack import pack
    from semipairs.sources import open_source

    src = open_source(f"imagefolder:{folder}")
    keys, cls = src.keys(), src.labels()
    rng = np.random.default_rng(seed)
    rows = []
    for i in rng.permutation(len(keys))[:n_pairs]:
        same = rng.random() < precision
        pool = [j for j in range(len(keys)) if (cls[j] == cls[i]) == same and j != i]
        j = int(rng.choice(pool))
        rows.append((keys[i], keys[j], round(float(rng.normal(0.8 if same else 0.6, 0.1)), 4)))
    csv = tmp / "pairs.csv"
    pd.DataFrame(rows, columns=["anchor_key", "positive_key", "score"]).to_csv(csv, index=False)
    return pack(f"imagefolder:{folder}", csv, tmp / "store", "cifar-pairs", "1.0.0", progress=False)
