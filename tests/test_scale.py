"""Curation at scale, at small N: clip-retrieval embedding folders as a source, the index chosen by size and
budget with its recall measured and recorded, memory-mapped float16 rows, and the search split over ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import semipairs
from curation.index import (
    IndexConfig,
    build_index,
    choose_factory,
    exact_neighbours,
    measure_recall,
    query_order,
    search,
)
from curation.mine import MiningConfig
from curation.pipeline import CurateConfig, curate
from curation.ranks import slice_of
from curation.vectors import Rows, load_embeddings
from semipairs.arrays import Parts, without_self
from semipairs.cli import app
from semipairs.errors import SemipairsError, SourceError
from semipairs.sources import open_source


def clustered(n: int, d: int, classes: int = 12, noise: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    label = rng.integers(0, classes, n)
    return (centers[label] + noise * rng.normal(size=(n, d))).astype(np.float32), label


def clip_layout(root: Path, parts: list[int], d: int = 32, label: str | None = "label", seed: int = 0,
                dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
    """clip-retrieval's layout: img_emb/img_emb_N.npy + metadata/metadata_N.parquet (image_path, label)."""
    x, y = clustered(sum(parts), d, seed=seed)
    (root / "img_emb").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(parts):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x[start:start + n].astype(dtype))
        meta = {"image_path": [f"/data/shard{i}/{j:06d}.jpg" for j in range(n)]}
        if label:
            meta[label] = [f"class-{c:02d}" for c in y[start:start + n]]
        pd.DataFrame(meta).to_parquet(root / "metadata" / f"metadata_{i}.parquet")
        start += n
    return x, y


def test_parts_read_like_one_array(tmp_path: Path) -> None:
    x, _ = clip_layout(tmp_path, [50, 7, 43])
    src = open_source(f"embeddings:{tmp_path}")
    whole = x.astype(np.float16)
    v = src.vectors
    assert v.shape == (100, 32) and len(v) == 100
    np.testing.assert_array_equal(v[:], whole)
    np.testing.assert_array_equal(v[45:60], whole[45:60])  # straddles three parts
    idx = np.array([0, 49, 50, 56, 57, 99])
    np.testing.assert_array_equal(v[idx], whole[idx])
    assert isinstance(v, Parts) and len(v.paths) == 3  # read on demand, never loaded whole


def test_embeddings_source_keys_labels_and_columns(tmp_path: Path) -> None:
    _, y = clip_layout(tmp_path, [30, 20])
    src = open_source(f"embeddings:{tmp_path}#label=label")
    assert len(src) == 50 and src.keys()[0] == "/data/shard0/000000.jpg" and src.keys()[30] == "/data/shard1/000000.jpg"
    assert src.classes == sorted({f"class-{c:02d}" for c in y})
    assert [src.classes[i] for i in src.labels()] == [f"class-{c:02d}" for c in y]
    assert not src.has_images
    with pytest.raises(OSError, match="holds embeddings, not images"):
        src.read(0)
    unlabelled = open_source(f"embeddings:{tmp_path}")
    assert not unlabelled.has_labels
    with pytest.raises(SourceError, match=r"metadata_0.parquet has no column 'url'"):
        open_source(f"embeddings:{tmp_path}#key=url")
    with pytest.raises(SourceError, match="unknown option 'lbl=x'"):
        open_source(f"embeddings:{tmp_path}#lbl=x")


@pytest.mark.parametrize("breakage, message", [
    ("rows", r"metadata_1.parquet has 19 rows but img_emb_1.npy has 20"),
    ("missing", r"metadata_1.parquet is missing"),
    ("nan", r"img_emb_1.npy row 3 is NaN or inf"),
    ("zero", r"img_emb_0.npy row 5 is all zeros"),
    ("dupkey", r"key '/data/shard0/000001.jpg' \(column 'image_path'\) names more than one row"),
    ("nofolder", r"img_emb is missing"),
    ("pickle", r"img_emb_0.npy is not a plain .npy array"),
])
def test_bad_layouts_name_the_file(tmp_path: Path, breakage: str, message: str) -> None:
    clip_layout(tmp_path, [30, 20])
    if breakage == "rows":
        pd.DataFrame({"image_path": [f"x{i}" for i in range(19)]}).to_parquet(tmp_path / "metadata" / "metadata_1.parquet")
    elif breakage == "missing":
        (tmp_path / "metadata" / "metadata_1.parquet").unlink()
    elif breakage in ("nan", "zero"):
        part, row = (1, 3) if breakage == "nan" else (0, 5)
        a = np.load(tmp_path / "img_emb" / f"img_emb_{part}.npy")
        a[row] = np.nan if breakage == "nan" else 0
        np.save(tmp_path / "img_emb" / f"img_emb_{part}.npy", a)
    elif breakage == "dupkey":
        meta = pd.read_parquet(tmp_path / "metadata" / "metadata_0.parquet")
        meta.loc[2, "image_path"] = meta.loc[1, "image_path"]
        meta.to_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    elif breakage == "nofolder":
        for f in (tmp_path / "img_emb").iterdir():
            f.unlink()
        (tmp_path / "img_emb").rmdir()
    elif breakage == "pickle":
        np.save(tmp_path / "img_emb" / "img_emb_0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["curate", "--source", f"embeddings:{tmp_path}", "--store", str(store), "--name", "x",
                                 "--k", "3"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    assert not store.exists() or not any(store.rglob("semipairs.json"))


def test_curate_from_embedding_folder_publishes_reference_pairs_without_images(tmp_path: Path) -> None:
    x, y = clip_layout(tmp_path / "emb", [600, 400])
    r = CliRunner().invoke(app, ["curate", "--source", f"embeddings:{tmp_path / 'emb'}#label=label", "--store",
                                 str(tmp_path / "s"), "--name", "web", "--k", "5", "--mutual", "--exact-max", "500",
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    ds = semipairs.load(out["path"])
    m, t = ds.manifest, ds.table
    assert ds.verify().ok and m.layout == "reference" and not m.shard_files()
    assert m.encoder.kind == "precomputed" and m.encoder.dim == 32
    # above exact_max: IVF, with recall@k measured on sampled queries and recorded
    assert m.index.factory.startswith("IVF") and m.index.nprobe == 16 and m.index.size == 1000
    assert 0.9 <= m.index.recall_at_k <= 1.0 and m.index.recall_k == 5 and m.index.recall_queries == 1000
    assert out["index"]["recall_at_k"] == m.index.recall_at_k
    # labels from the metadata column; pairs of clustered rows are mostly same-class
    lab = dict(zip(open_source(f"embeddings:{tmp_path / 'emb'}#label=label").keys(), y))
    same = np.mean([lab[a] == lab[p] for a, p in zip(t["anchor_key"], t["positive_key"])])
    assert m.stats.label_precision == pytest.approx(same) and same > 0.9
    metrics = json.loads((Path(out["path"]) / "audit" / "metrics.json").read_text())
    assert "holds embeddings, not images" in metrics["grids"]
    r = CliRunner().invoke(app, ["curate", "--source", f"embeddings:{tmp_path / 'emb'}", "--store", str(tmp_path / "s"),
                                 "--name", "web2", "--layout", "embedded"])
    assert r.exit_code == 2 and "holds embeddings, not images" in r.output


def test_index_is_chosen_by_size_and_budget() -> None:
    cfg = IndexConfig(exact_max=1000)
    assert choose_factory(1000, 64, cfg) == "Flat"
    assert choose_factory(10_000, 64, cfg) == "IVF256,Flat"  # fits: no budget given
    fits = IndexConfig(exact_max=1000, budget_bytes=10_000 * (64 * 4 + 8))
    assert choose_factory(10_000, 64, fits) == "IVF256,Flat"
    tight = IndexConfig(exact_max=1000, budget_bytes=10_000 * (16 + 8))  # 16-byte codes fit, float32 does not
    assert choose_factory(10_000, 64, tight) == "IVF256,PQ16"
    assert choose_factory(10_000, 64, IndexConfig(exact_max=1000, budget_bytes=10_000 * (4 + 8))) == "IVF256,PQ4"
    with pytest.raises(SemipairsError, match="do not fit an index budget"):
        choose_factory(10_000, 64, IndexConfig(exact_max=1000, budget_bytes=10_000 * 8))
    assert choose_factory(10, 64, IndexConfig(factory="HNSW32")) == "HNSW32"


@pytest.mark.slow
def test_pq_index_recall_is_measured_against_exact_search() -> None:
    x, _ = clustered(6000, 32, classes=30, noise=1.0)
    rows = Rows(x.astype(np.float16))  # float16 rows, normalised chunk by chunk
    cfg = IndexConfig(exact_max=1000, budget_bytes=6000 * 16)
    index, info = build_index(rows, cfg)
    assert info.factory == "IVF153,PQ8" and info.bytes_per_vector < 32 * 4  # far below float32 rows
    scores, ids = search(index, rows, 10, 1024, progress=False)
    rec = measure_recall(rows, ids, 10, "cosine", queries=300)
    # the same number by brute force over the whole matrix
    xn = rows.chunk(0, len(rows))
    sample = np.sort(np.random.default_rng(1).choice(6000, 300, replace=False))
    sims = xn[sample] @ xn.T
    sims[np.arange(300), sample] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :10]
    expected = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids[sample], truth)])
    assert rec["recall_at_k"] == pytest.approx(expected, abs=0.002) and rec["recall_queries"] == 300
    assert 0.2 < rec["recall_at_k"] < 0.99  # 8-byte codes lose neighbours; the number says so
    flat, _ = build_index(rows, IndexConfig(factory="IVF64,Flat", nprobe=64))  # every list: exact
    _, ids_flat = search(flat, rows, 10, 1024, progress=False)
    assert measure_recall(rows, ids_flat, 10, "cosine", queries=300)["recall_at_k"] > 0.99


def test_exact_neighbours_stream_the_base_in_chunks() -> None:
    x, _ = clustered(700, 16)
    rows = Rows(x)
    q = np.array([0, 5, 699, 300])
    got = exact_neighbours(rows, q, 4, "cosine", chunk=64)
    xn = rows.chunk(0, 700)
    sims = xn[q] @ xn.T
    sims[np.arange(4), q] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-sims, axis=1)[:, :4])
    d2 = ((xn[q][:, None] - xn[None]) ** 2).sum(-1)
    d2[np.arange(4), q] = np.inf
    np.testing.assert_array_equal(exact_neighbours(rows, q, 4, "l2", chunk=100), np.argsort(d2, axis=1)[:, :4])


def test_index_override_nprobe_and_bad_factory(tmp_path: Path) -> None:
    clip_layout(tmp_path / "emb", [800])
    base = ["curate", "--source", f"embeddings:{tmp_path / 'emb'}", "--store", str(tmp_path / "s"), "--k", "4"]
    r = CliRunner().invoke(app, [*base, "--name", "sq", "--index", "IVF16,SQ8", "--nprobe", "4", "--json"])
    assert r.exit_code == 0, r.output
    ix = json.loads(r.stdout)["index"]
    assert ix["factory"] == "IVF16,SQ8" and ix["nprobe"] == 4 and ix["nlist"] == 16 and 0 < ix["recall_at_k"] <= 1
    r = CliRunner().invoke(app, [*base, "--name", "bad", "--index", "IVF16,Nonsense"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "index factory 'IVF16,Nonsense'" in lines[0], r.output


def test_float16_embeddings_file_stays_memory_mapped(tmp_path: Path, cifar_folder: Path) -> None:
    src = open_source(f"imagefolder:{cifar_folder}")
    x, _ = clustered(len(src), 24)
    np.save(tmp_path / "e.npy", x.astype(np.float16))
    emb = load_embeddings(tmp_path / "e.npy", src)
    assert isinstance(emb.vectors, Parts) and emb.vectors.dtype == np.float16  # read on demand
    res = curate(CurateConfig(source=src.spec, store=tmp_path / "s", name="f16", embeddings=tmp_path / "e.npy",
                              layout="reference", mining=MiningConfig(k=3)), progress=False)
    t = semipairs.load(res.path).table
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pos = src.index_of()
    # scores are the float16 rows' cosine similarities (normalised in float32 chunks)
    x16 = x.astype(np.float16).astype(np.float32)
    x16 /= np.linalg.norm(x16, axis=1, keepdims=True)
    want = [float(x16[pos[a]] @ x16[pos[p]]) for a, p in zip(t["anchor_key"], t["positive_key"])]
    np.testing.assert_allclose(t["score"], want, atol=1e-5)
    assert np.abs(np.asarray(want) - [float(xn[pos[a]] @ xn[pos[p]]) for a, p in zip(t["anchor_key"], t["positive_key"])]
                  ).max() < 5e-3


def test_rank_slices_cover_the_queries_once() -> None:
    for n, world in ((10, 3), (1, 2), (1000, 4)):
        bounds = [slice_of(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.slow
def test_torchrun_two_ranks_search_their_slices_and_match_one_process(tmp_path: Path) -> None:
    clip_layout(tmp_path / "emb", [700, 500])
    spec = f"embeddings:{tmp_path / 'emb'}#label=label"
    common = ["curate", "--source", spec, "--store", str(tmp_path / "s"), "--k", "6", "--mutual", "--exact-max", "500",
              "--nprobe", "4", "--json"]
    r = CliRunner().invoke(app, [*common, "--name", "one"])
    assert r.exit_code == 0, r.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "semipairs.cli", *common, "--name", "two"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = semipairs.load(tmp_path / "s" / "one"), semipairs.load(tmp_path / "s" / "two")
    assert len(one.table) == len(two.table) > 0
    for col in ("anchor_key", "positive_key", "rank", "mutual"):
        assert one.table[col].tolist() == two.table[col].tolist(), col
    np.testing.assert_allclose(one.table["score"], two.table["score"], atol=1e-6)
    assert one.manifest.index.factory == two.manifest.index.factory == "IVF30,Flat"
    assert two.manifest.index.nprobe == 4 and two.manifest.index.recall_at_k == one.manifest.index.recall_at_k
    assert not list((tmp_path / "s" / ".cache").glob("search-*"))  # the run's index and parts are removed


def test_list_order_search_gives_the_row_order_results() -> None:
    x, _ = clustered(3000, 16, classes=40)
    rows = Rows(x)
    index, _ = build_index(rows, IndexConfig(factory="IVF32,Flat", nprobe=3))
    order = query_order(index, 3000)
    assert sorted(order.tolist()) == list(range(3000)) and (order != np.arange(3000)).any()
    scores, ids = search(index, rows, 5, 700, progress=False)
    d, i = index.search(rows.chunk(0, 3000), 6)  # plain faiss, row order, self still in
    s_ref, i_ref = without_self(d, i, 0, 5)
    np.testing.assert_array_equal(ids, i_ref)
    np.testing.assert_allclose(scores, s_ref, atol=1e-6)
    flat, _ = build_index(rows, IndexConfig())
    np.testing.assert_array_equal(query_order(flat, 3000), np.arange(3000))


def test_column_flags_name_keys_and_labels(tmp_path: Path) -> None:
    clip_layout(tmp_path / "emb", [300])
    meta = pd.read_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    meta["url"] = [f"https://x/{i}" for i in range(300)]
    meta.to_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    r = CliRunner().invoke(app, ["curate", "--source", f"embeddings:{tmp_path / 'emb'}", "--key-column", "url",
                                 "--label-column", "label", "--store", str(tmp_path / "s"), "--name", "f", "--k", "3",
                                 "--json"])
    assert r.exit_code == 0, r.output
    ds = semipairs.load(json.loads(r.stdout)["path"])
    assert ds.manifest.source.uri == f"embeddings:{tmp_path / 'emb'}#key=url,label=label"
    assert ds.table["anchor_key"].str.startswith("https://x/").all() and ds.manifest.stats.label_precision > 0.9
    r = CliRunner().invoke(app, ["curate", "--source", "digits", "--key-column", "url", "--store", str(tmp_path / "s"),
                                 "--name", "g"])
    assert r.exit_code == 2 and "name metadata columns of embeddings:DIR" in r.output
