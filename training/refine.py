"""GNN refinement (the inter-instance phase of GraphNNCLR / "Beyond Augmentation"), as one readable builder.

From a trained checkpoint: embed the data with the student (query) encoder and with the teacher (momentum)
encoder; one kNN graph per stream; a GNN trained BYOL-style where the student graph and the teacher graph
are two views of the same nodes (online encoder + predictor, EMA target, 2 - 2 cos both ways) on sampled
mini-batches. The refined embedding of a node is its online encodings in both graphs, concatenated.
Outputs, in ``OUT``: ``refined.npy`` + ``refined.keys.txt`` (rows in source order: usable as
``semipairs curate --embeddings``), the same for ``--eval-data`` as ``refined-eval.*``, ``raw*.npy``,
``gnn.pt`` (weights only) and ``report.json`` (kNN top-1 raw vs refined, losses, settings). With a
labelled ``--eval-data``, refinement that scores below the raw student is declined: the report says why
and ``refined*.npy`` hold the raw embeddings, so mining on them is never worse than on raw ones.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from semipairs.atomic import atomic_write, remove_stale_temps
from semipairs.checkpoint import backbone_from_state, load_checkpoint, save_checkpoint
from semipairs.errors import DivergedError
from semipairs.lock import exclusive
from semipairs.precision import all_finite, precision_note, select_for_inference
from semipairs.sources import open_source
from training.configs import RefineConfig
from training.evaluate import extract_features, knn_top1
from training.gnn import GNNEncoder, gcn_norm_parts, sample_subgraph
from training.graphs import KnnGraph, build_knn_graph
from training.losses import byol_loss
from training.momentum import update_momentum


def _augment(x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor, cfg: RefineConfig, gen: torch.Generator):
    """Feature-column masking and edge dropping (self loops kept), as in BGRL: without them the two streams
    of a MoCo checkpoint are near copies and the BYOL task is trivial."""
    if cfg.feature_mask > 0:
        x = x * (torch.rand(x.shape[1], generator=gen) >= cfg.feature_mask).to(x.dtype)
    if cfg.edge_drop > 0:
        loop = edge_index[0] == edge_index[1]
        keep = loop | (torch.rand(edge_index.shape[1], generator=gen) >= cfg.edge_drop)
        weight = torch.where(loop, weight, weight / (1 - cfg.edge_drop))[keep]  # kept edges stand for dropped ones
        edge_index = edge_index[:, keep]
    return x, edge_index, weight


def embed_streams(cfg: RefineConfig, device: str, progress: bool, log=print) -> dict[str, Any]:
    """Student and teacher features of the data (and held-out data), L2-normalised, with labels.

    A checkpoint without a teacher (SimSiam) gives the teacher stream as the same encoder on an augmented
    view (the MoCo-v2 recipe, seeded), and says so."""
    state = load_checkpoint(cfg.checkpoint)
    student, spec, _ = backbone_from_state(state)
    teacher = backbone_from_state(state, "teacher")[0] if state.get("teacher") is not None else None
    if teacher is None:
        log(f"{cfg.checkpoint}: no teacher (momentum) encoder in this checkpoint (SimSiam and SimCLR have none): "
            "the teacher stream is the same encoder on an augmented view")
    out: dict[str, Any] = {"teacher": "momentum-encoder" if teacher is not None else "augmented-view"}
    sources = {"train": open_source(cfg.data)}
    if cfg.eval_data:
        sources["eval"] = open_source(cfg.eval_data)
    precision = select_for_inference(cfg.precision, device, student, spec.image_size,
                                     key=f"refine:{spec.arch}:cifar_stem={spec.cifar_stem}")
    if text := precision_note(precision):
        log(text)
    kw = {"num_workers": cfg.num_workers, "device": device, "progress": progress, "require_labels": False,
          "precision": precision}
    for name, src in sources.items():
        s, y = extract_features(student.to(device), src, spec.image_size, **kw)
        t, _ = extract_features((teacher or student).to(device), src, spec.image_size, augmented=teacher is None,
                                seed=cfg.seed + (0 if name == "train" else 1), **kw)
        out[name] = {"student": s, "teacher": t, "labels": y, "keys": src.keys(), "spec": src.spec}
    return out


def _graphs(streams: dict[str, Any], cfg: RefineConfig) -> dict[str, KnnGraph]:
    ev = streams.get("eval")
    return {view: build_knn_graph(streams["train"][view], cfg.k, None if ev is None else ev[view], cfg.heldout_k)
            for view in ("student", "teacher")}


def train_gnn(x: dict[str, torch.Tensor], graphs: dict[str, KnnGraph], cfg: RefineConfig, device: str = "cpu",
              progress: bool = False) -> tuple[GNNEncoder, list[float]]:
    """BYOL over two graph views of the same nodes; seeds are training nodes, mini-batches are sampled."""
    fanouts = cfg.resolved_fanouts()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dim = x["student"].shape[1]
    online = GNNEncoder(dim, cfg.hidden, cfg.layers, cfg.conv, skip=cfg.skip).to(device)
    h = cfg.hidden
    predictor = nn.Sequential(nn.Linear(h, h), nn.PReLU(h), nn.Linear(h, h)).to(device)
    target = copy.deepcopy(online).requires_grad_(False)
    params = [*online.parameters(), *predictor.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    norms = {v: gcn_norm_parts(g) for v, g in graphs.items()}
    n_train = graphs["student"].num_train
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total, step, losses = cfg.epochs * steps_per_epoch, 0, []
    bar = tqdm(total=total, desc="refine", disable=not progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n_train, generator=gen)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            seeds = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            z, y = {}, {}
            for view, g in graphs.items():
                sub = sample_subgraph(g, seeds, fanouts, norms[view], gen)
                feats, ei, w = x[view][sub.n_id], sub.edge_index, sub.edge_weight
                with torch.no_grad():  # the target sees the graph as it is
                    y[view] = target(feats.to(device), ei.to(device), w.to(device))[: len(seeds)]
                feats, ei, w = _augment(feats, ei, w, cfg, gen)  # the online branch a perturbed copy (BGRL)
                z[view] = online(feats.to(device), ei.to(device), w.to(device))[: len(seeds)]
            loss = byol_loss(predictor(z["student"]), y["teacher"]) + byol_loss(predictor(z["teacher"]), y["student"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not all_finite([loss.detach(), *(q.grad for q in params)]):
                raise DivergedError(f"refinement diverged at step {step + 1}: the loss or a gradient is not finite "
                                    f"(lr {cfg.lr}); nothing was written; try fewer --epochs or a lower lr")
            opt.step()
            update_momentum(online, target, 1 - (1 - cfg.ema) * (math.cos(math.pi * step / total) + 1) / 2)
            step += 1
            epoch_loss += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_loss / (b + 1):.4f}")
        losses.append(epoch_loss / steps_per_epoch)
    bar.close()
    return online, losses


def refined_embeddings(online: GNNEncoder, x: dict[str, torch.Tensor], graphs: dict[str, KnnGraph],
                       device: str = "cpu", center: bool = True) -> torch.Tensor:
    """Concatenation of the online encodings of every node in both graphs, each half L2-normalised.

    With ``center`` the training nodes' mean is subtracted first: PReLU + jumping-knowledge max outputs
    share a large common component that squeezes every cosine towards 1 (and would trip a near-duplicate
    threshold when mining); the mean is taken over training nodes only."""
    halves = []
    for v, g in graphs.items():
        h = online.encode_all(g, x[v], gcn_norm_parts(g), device=device)
        if center:
            h = h - h[: g.num_train].mean(0)
        halves.append(F.normalize(h, dim=1))
    return torch.cat(halves, 1)


def _save(out: Path, stem: str, x: torch.Tensor, keys: list[str]) -> None:
    """.npy + sibling keys file (one key per line, same order), each written atomically."""
    with atomic_write(out / f"{stem}.npy") as f:
        np.save(f, x.numpy().astype(np.float32))
    with atomic_write(out / f"{stem}.keys.txt") as f:
        f.write("".join(k + "\n" for k in keys).encode("utf-8"))


def _knn(train_f, train_y, test_f, test_y, k: int) -> float | None:
    if (train_y < 0).any() or (test_y < 0).any():
        return None
    return round(knn_top1(train_f, train_y, test_f, test_y, k=k), 2)


OUTPUTS = tuple(f"{stem}{ext}" for stem in ("refined", "raw", "refined-eval", "raw-eval") for ext in (".npy", ".keys.txt")) + (
    "gnn.pt", "report.json")


def refine(cfg: RefineConfig, progress: bool = True, log=print) -> dict[str, Any]:
    """The whole phase: embed both streams, build the graphs, train the GNN, write embeddings and a report.
    One writer per ``cfg.out``: a second refinement into it is refused while this one runs. ``report.json`` is
    written last and removed before the first output is replaced: a directory without it holds no finished
    refinement (a killed one: run the same command again)."""
    with exclusive(cfg.out, "a refinement into this directory"):
        for name in OUTPUTS:  # what a killed refinement left half-written (never over a finished file)
            remove_stale_temps(cfg.out / name)
        return _refine(cfg, progress, log)


def _refine(cfg: RefineConfig, progress: bool, log) -> dict[str, Any]:
    t0 = time.time()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    streams = embed_streams(cfg, device, progress, log)
    tr, ev = streams["train"], streams.get("eval")
    graphs = _graphs(streams, cfg)  # raises GraphError for empty inputs or k out of range
    cfg.out.mkdir(parents=True, exist_ok=True)  # only once the inputs proved good
    x = {v: torch.cat([tr[v]] + ([ev[v]] if ev else [])) for v in ("student", "teacher")}
    online, losses = train_gnn(x, graphs, cfg, device, progress)
    refined = refined_embeddings(online, x, graphs, device, cfg.center)
    (cfg.out / "report.json").unlink(missing_ok=True)  # from here on outputs change: an earlier report never vouches
    n = len(tr["keys"])
    report: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "data": cfg.data, "eval_data": cfg.eval_data, "teacher_stream": streams["teacher"],
        "nodes": graphs["student"].num_nodes, "train_nodes": n,
        "edges": {v: g.num_edges for v, g in graphs.items()}, "losses": [round(v, 5) for v in losses],
        "config": json.loads(cfg.model_dump_json()), "declined": None,
    }
    if ev is not None:
        both = torch.cat([F.normalize(torch.cat([s["student"], s["teacher"]], 1), dim=1) for s in (tr, ev)])
        knn = report["knn_top1"] = {
            "raw_student": _knn(tr["student"], tr["labels"], ev["student"], ev["labels"], cfg.knn_k),
            "raw_both_streams": _knn(both[:n], tr["labels"], both[n:], ev["labels"], cfg.knn_k),
            "refined": _knn(refined[:n], tr["labels"], refined[n:], ev["labels"], cfg.knn_k),
        }
        worse = knn["refined"] is not None and knn["raw_student"] is not None and knn["refined"] < knn["raw_student"]
        if worse and cfg.decline_worse:
            report["declined"] = (f"refined embeddings score {knn['refined']:.2f}% kNN top-1 on {cfg.eval_data}, below the "
                                  f"raw student's {knn['raw_student']:.2f}%: the kNN graph is too noisy to propagate over; "
                                  "refined*.npy hold the raw embeddings")
            log(report["declined"])
            refined = torch.cat([tr["student"], ev["student"]])
        _save(cfg.out, "refined-eval", refined[n:], ev["keys"])
        _save(cfg.out, "raw-eval", ev["student"], ev["keys"])
    _save(cfg.out, "refined", refined[:n], tr["keys"])
    _save(cfg.out, "raw", tr["student"], tr["keys"])
    save_checkpoint(cfg.out / "gnn.pt", {k: v.cpu() for k, v in online.state_dict().items()})
    report["seconds"] = round(time.time() - t0, 1)
    with atomic_write(cfg.out / "report.json") as f:
        f.write(json.dumps(report, indent=2).encode())
    return report
