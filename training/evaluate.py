"""Evaluation on frozen features: weighted kNN (k=200, T=0.07, cosine; InstDisc / lightly / solo-learn)
and a linear probe. Both report top-1 in percent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from semipairs.decoded import DecodedImages, decode_source
from semipairs.errors import DivergedError, InvalidValueError
from semipairs.precision import Precision, resolve_precision
from semipairs.sources.base import ImageSource
from semipairs.views import evaluation, stats_for
from training.augment import moco_v2
from training.batch_augment import BatchRecipe


class _Labelled(Dataset):
    def __init__(self, source: ImageSource, transform, require_labels: bool = True) -> None:
        self.source, self.transform = source, transform
        self.labels = _labels(source, require_labels).tolist()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(self.source.read(i).image()), self.labels[i]


def _labels(source: ImageSource, require: bool) -> torch.Tensor:
    labels = source.labels()
    if require and any(lab is None for lab in labels):
        raise InvalidValueError(f"{source.spec}: evaluation needs labels for every image")
    return torch.tensor([-1 if lab is None else lab for lab in labels], dtype=torch.long)


def _decoded_batches(decoded: DecodedImages, image_size: int, batch_size: int, augment: BatchRecipe | None,
                     generator: torch.Generator) -> Iterator[torch.Tensor]:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats_for(image_size))
    for s in range(0, len(decoded), batch_size):
        x = torch.from_numpy(np.array(decoded.images[s:s + batch_size])).permute(0, 3, 1, 2)  # a copy: the map is read-only
        yield augment(x, generator) if augment is not None else (x.float().div_(255) - mean) / std


def _streamed_batches(source: ImageSource, transform, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    for x, _ in DataLoader(_Labelled(source, transform, require_labels=False), batch_size=batch_size, num_workers=num_workers):
        yield x


@torch.no_grad()  # not inference_mode: a linear probe trains on these tensors
def extract_features(backbone: nn.Module, source: ImageSource, image_size: int, *, augmented: bool = False,
                     batch_size: int = 256, num_workers: int = 2, device: str = "cpu", precision: Precision | None = None,
                     decode_budget: int | None = None, progress: bool = False, require_labels: bool = True, seed: int = 0,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised features, labels) of every image of a source, in key order; a missing label is -1
    unless required. Images come from the decoded cache when the source fits its budget (else they
    stream through DataLoader workers); ``augmented`` gives MoCo-v2 views (seeded) instead of the plain one.
    Rows stay aligned with ``source.keys()``: an unreadable image in the cache is a blank one."""
    labels = _labels(source, require_labels)
    precision = precision or resolve_precision("fp32", device)
    decoded = decode_source(source, image_size, budget_bytes=decode_budget, workers=num_workers or None, progress=progress)
    if decoded is not None:
        batches = _decoded_batches(decoded, image_size, batch_size, BatchRecipe(image_size) if augmented else None,
                                   torch.Generator().manual_seed(seed))
    else:
        torch.manual_seed(seed)
        transform = moco_v2(image_size) if augmented else evaluation(image_size)
        batches = _streamed_batches(source, transform, batch_size, num_workers)
    was_training = backbone.training
    backbone.eval()
    model = precision.prepare_model(backbone)
    feats = []
    with precision.autocast():
        for x in tqdm(batches, total=-(-len(source) // batch_size), desc=f"features {source.spec}", disable=not progress,
                      leave=False):
            feats.append(F.normalize(model(precision.prepare_input(x.to(device))).flatten(1).float(), dim=1).cpu())
    backbone.train(was_training)
    feats = torch.cat(feats)
    if not bool(torch.isfinite(feats).all()):
        bad = int((~torch.isfinite(feats).all(1)).sum())
        raise DivergedError(f"{source.spec}: {bad} of {len(feats)} feature rows are not finite under precision "
                            f"{precision.label}: the backbone's weights hold NaN/inf (a diverged run?) or the precision "
                            "is wrong for this model (try --precision fp32)")
    return feats, labels


def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, k: int = 200,
             temperature: float = 0.07, chunk: int = 1024) -> float:
    """Weighted kNN: each of the k nearest train features votes exp(sim / T) for its class."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_f))
    correct = 0
    for s in range(0, len(test_f), chunk):
        sim = test_f[s:s + chunk] @ train_f.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top), num_classes).scatter_add_(1, train_y[idx], (top / temperature).exp())
        correct += int((votes.argmax(1) == test_y[s:s + chunk]).sum())
    return 100.0 * correct / len(test_f)


def linear_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                epochs: int = 100, lr: float = 1e-2, seed: int = 0) -> float:
    """Linear probe (softmax regression, Adam, full-batch on standardised frozen features)."""
    g = torch.Generator().manual_seed(seed)
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    xtr, xte = (train_f - mean) / std, (test_f - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(xtr), train_y).backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float((head(xte).argmax(1) == test_y).float().mean())


@dataclass
class EvalResult:
    knn_top1: float
    linear_top1: float | None = None

    def to_dict(self) -> dict:
        linear = None if self.linear_top1 is None else round(self.linear_top1, 2)
        return {"knn_top1": round(self.knn_top1, 2), "linear_top1": linear}


def evaluate_backbone(backbone: nn.Module, train: ImageSource, test: ImageSource, image_size: int, linear: bool = False,
                      k: int = 200, **features: Any) -> EvalResult:
    """kNN (and linear-probe) top-1; ``features`` go to ``extract_features`` (device, precision, workers...)."""
    trf, try_ = extract_features(backbone, train, image_size, **features)
    tef, tey = extract_features(backbone, test, image_size, **features)
    return EvalResult(knn_top1(trf, try_, tef, tey, k=k), linear_top1(trf, try_, tef, tey) if linear else None)
