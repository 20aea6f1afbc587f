"""GNN refinement on real CIFAR-10 JPEGs: kNN graphs, neighbour sampling, BYOL steps, `semipairs refine`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from semipairs.cli import app
from semipairs.sources import open_source
from tests.conftest import extract_cifar
from training.gnn import GNNEncoder, gcn_norm_parts, sample_subgraph
from training.graphs import GraphError, build_knn_graph
from training.refine import RefineConfig, train_gnn
from training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def pixels(cifar_folder: Path) -> np.ndarray:
    """8x8 grey thumbnails of the 300 real images: cheap features with real neighbourhood structure."""
    src = open_source(f"imagefolder:{cifar_folder}")
    return np.stack([np.asarray(src.read(i).image("L").resize((8, 8)), np.float32).ravel() - 128 for i in range(len(src))])


@pytest.fixture(scope="module")
def heldout_folder(tmp_path_factory) -> Path:
    return extract_cifar(tmp_path_factory.mktemp("heldout") / "images", split="train", per_class=40)


def edges(g) -> set[tuple[int, int]]:
    return set(map(tuple, g.edge_index().T.tolist()))


def test_knn_graph_is_symmetric_and_links_heldout_nodes_to_training_nodes(pixels: np.ndarray) -> None:
    train, held = pixels[:200], pixels[200:]
    g = build_knn_graph(train, k=5, heldout=held, heldout_k=3)
    e = edges(g)
    assert g.num_nodes == 300 and g.num_train == 200
    assert all((d, s) in e for s, d in e)  # symmetrised
    assert not any(s == d for s, d in e)  # no self loops unless asked
    xn = train / np.linalg.norm(train, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    for node in (0, 57, 199):  # each node's k nearest (brute force) are among its neighbours
        assert set(np.argsort(-sims[node])[:5].tolist()) <= {s for s, d in e if d == node}
    hn = held / np.linalg.norm(held, axis=1, keepdims=True)
    for h in range(100):
        into = {s for s, d in e if d == 200 + h}
        assert len(into) == 3 and all(s < 200 for s in into)  # messages come from training nodes only
        assert into == set(np.argsort(-(hn[h] @ xn.T))[:3].tolist())
    looped = build_knn_graph(train, k=5, self_loops=True)
    assert sum(s == d for s, d in edges(looped)) == 200


def test_graph_errors_are_clear(pixels: np.ndarray) -> None:
    with pytest.raises(GraphError, match="k=200 must be at least 1 and below the number of training nodes"):
        build_knn_graph(pixels[:200], k=200)
    with pytest.raises(GraphError, match="non-empty"):
        build_knn_graph(pixels[:0], k=3)
    with pytest.raises(GraphError, match="held-out embeddings have dim"):
        build_knn_graph(pixels[:50], k=3, heldout=pixels[50:60, :10])


def test_sampling_and_layerwise_inference_match_the_full_graph(pixels: np.ndarray) -> None:
    g = build_knn_graph(pixels[:200], k=8, heldout=pixels[200:])
    inv = gcn_norm_parts(g)
    seeds = torch.tensor([3, 150, 250])
    sub = sample_subgraph(g, seeds, [4, 3], inv, torch.Generator().manual_seed(0))
    assert sub.n_id[:3].tolist() == seeds.tolist() and len(set(sub.n_id.tolist())) == len(sub.n_id)
    e = edges(g)
    real = sub.edge_index[:, sub.edge_index[0] != sub.edge_index[1]]
    assert all((int(sub.n_id[s]), int(sub.n_id[d])) in e for s, d in real.T)  # every sampled edge exists
    first_hop = real[:, real[1] < 3]
    assert torch.bincount(first_hop[1], minlength=3).max() <= 4  # fanout respected
    torch.manual_seed(0)
    for conv in ("gcn", "sage", "gat"):
        model = GNNEncoder(64, hidden=32, layers=2, conv=conv).eval()
        x = torch.randn(g.num_nodes, 64)
        full = sample_subgraph(g, torch.arange(g.num_nodes), [None], inv)  # every node with all its in-edges
        with torch.no_grad():
            ref = model(x, full.edge_index, full.edge_weight)
        assert torch.allclose(model.encode_all(g, x, inv, chunk=37), ref, atol=1e-5), conv


def test_real_gnn_steps_lower_the_loss(pixels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    teacher = pixels + rng.normal(0, 8, pixels.shape).astype(np.float32)  # a second, noisier view of the same nodes
    x = {v: torch.nn.functional.normalize(torch.from_numpy(a), dim=1) for v, a in (("student", pixels), ("teacher", teacher))}
    graphs = {v: build_knn_graph(x[v], k=6) for v in x}
    cfg = RefineConfig(checkpoint=Path("unused"), data="unused", out=Path("unused"), epochs=8, batch_size=64, hidden=32,
                       fanouts=[5, 5], lr=3e-3)
    _, losses = train_gnn(x, graphs, cfg)
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def checkpoints(cifar_folder: Path, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for method in ("moco", "simsiam"):
        run = tmp_path_factory.mktemp(method)
        train(TrainConfig(method=method, data=f"imagefolder:{cifar_folder}", out=run, epochs=1, max_steps=2, batch_size=32,
                          image_size=16, queue_size=64, num_workers=0), progress=False)
        out[method] = run / "checkpoint.pt"
    return out


def test_refine_cli_writes_embeddings_curate_accepts(checkpoints, cifar_folder: Path, heldout_folder: Path,
                                                      tmp_path: Path) -> None:
    data, held = f"imagefolder:{cifar_folder}", f"imagefolder:{heldout_folder}"
    out = tmp_path / "refined"
    r = CliRunner().invoke(app, ["refine", "--checkpoint", str(checkpoints["moco"]), "--data", data, "--eval-data", held,
                                 "--k", "5", "--heldout-k", "3", "--fanouts", "4,3", "--epochs", "2", "--batch-size", "64",
                                 "--hidden", "32", "--num-workers", "0", "--keep-worse", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["teacher_stream"] == "momentum-encoder" and report["nodes"] == 420 and report["train_nodes"] == 300
    assert report["config"]["fanouts"] == [4, 3] and report["config"]["heldout_k"] == 3
    # 120 held-out nodes x 3 edges, both directions, on top of the training graph
    assert report["edges"]["student"] == build_knn_graph(np.load(out / "raw.npy"), 5).num_edges + 2 * 120 * 3
    assert set(report["knn_top1"]) == {"raw_student", "raw_both_streams", "refined"}
    assert all(0 <= v <= 100 for v in report["knn_top1"].values())
    # by default a refinement that scores below raw is declined: what it writes is never worse than raw
    guarded = tmp_path / "guarded"
    r = CliRunner().invoke(app, ["refine", "--checkpoint", str(checkpoints["moco"]), "--data", data, "--eval-data", held,
                                 "--k", "5", "--heldout-k", "3", "--fanouts", "4,3", "--epochs", "2", "--batch-size", "64",
                                 "--hidden", "32", "--num-workers", "0", "--out", str(guarded), "--json"])
    g = json.loads(r.stdout)
    assert r.exit_code == 0 and g["knn_top1"] == report["knn_top1"]  # same seed, same run
    if g["knn_top1"]["refined"] < g["knn_top1"]["raw_student"]:
        assert "below the raw student" in g["declined"]
        assert np.array_equal(np.load(guarded / "refined.npy"), np.load(guarded / "raw.npy"))
    else:
        assert g["declined"] is None and np.array_equal(np.load(guarded / "refined.npy"), np.load(out / "refined.npy"))
    src = open_source(data)
    refined = np.load(out / "refined.npy")
    assert refined.shape == (300, 64) and np.allclose(np.linalg.norm(refined, axis=1), np.sqrt(2), atol=1e-4)
    assert (out / "refined.keys.txt").read_text().splitlines() == src.keys()
    assert np.load(out / "refined-eval.npy").shape == (120, 64)
    assert (out / "refined-eval.keys.txt").read_text().splitlines() == open_source(held).keys()

    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["curate", "--source", data, "--embeddings", str(out / "refined.npy"), "--store", str(store),
                                 "--name", "refined-pairs", "--version", "1.0.0", "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((store / "refined-pairs" / "1.0.0" / "semipairs.json").read_text())
    assert manifest["stats"]["num_pairs"] > 0 and manifest["encoder"]["kind"] == "precomputed"

    keys = out / "refined.keys.txt"  # rows that no longer match the source's order are refused
    lines = keys.read_text().splitlines()
    keys.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    r = CliRunner().invoke(app, ["curate", "--source", data, "--embeddings", str(out / "refined.npy"), "--store", str(store),
                                 "--name", "refined-pairs", "--version", "1.0.1"])
    assert r.exit_code != 0 and "not in the order of source" in r.output


def test_refine_simsiam_says_it_uses_augmented_views_and_k_errors(checkpoints, cifar_folder: Path, tmp_path: Path) -> None:
    data = f"imagefolder:{cifar_folder}"
    r = CliRunner().invoke(app, ["refine", "--checkpoint", str(checkpoints["simsiam"]), "--data", data, "--k", "4",
                                 "--epochs", "1", "--hidden", "32", "--num-workers", "0", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "no teacher (momentum) encoder" in r.output
    assert json.loads((tmp_path / "s" / "report.json").read_text())["teacher_stream"] == "augmented-view"
    r = CliRunner().invoke(app, ["refine", "--checkpoint", str(checkpoints["moco"]), "--data", data, "--k", "300",
                                 "--epochs", "1", "--num-workers", "0", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "k=300 must be at least 1 and below the number of training nodes (300)" in r.output
    r = CliRunner().invoke(app, ["refine", "--checkpoint", str(checkpoints["moco"]), "--data", data, "--layers", "3",
                                 "--fanouts", "10,5", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "--fanouts (config key 'fanouts'): [10, 5] must give one value >= 1 per layer (3" in r.output
    assert not (tmp_path / "f").exists()  # refused before any embedding work
