"""Evaluation on frozen features: weighted kNN (k=200, T=0.07, cosine; InstDisc / lightly / solo-learn)
and a linear probe. Both report top-1 in percent."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from semipairs.sources.base import ImageSource


class _Labelled(Dataset):
    def __init__(self, source: ImageSource, transform, require_labels: bool = True) -> None:
        self.source, self.transform = source, transform
        labels = source.labels()
        if require_labels and any(lab is None for lab in labels):
            raise ValueError(f"{source.spec}: evaluation needs labels for every image")
        self.labels = [-1 if lab is None else lab for lab in labels]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(self.source.read(i).image()), self.labels[i]


@torch.no_grad()  # not inference_mode: a linear probe trains on these tensors
def extract_features(backbone: nn.Module, source: ImageSource, transform, batch_size: int = 256, num_workers: int = 2,
                     device: str = "cpu", progress: bool = False, require_labels: bool = True,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised features, labels) of every image of a source; a missing label is -1 unless required."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    loader = DataLoader(_Labelled(source, transform, require_labels), batch_size=batch_size, num_workers=num_workers)
    on_gpu = device.startswith("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        for x, y in tqdm(loader, desc=f"features {source.spec}", disable=not progress, leave=False):
            feats.append(F.normalize(backbone(x.to(device)).flatten(1).float(), dim=1).cpu())
            labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


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


def evaluate_backbone(backbone: nn.Module, train: ImageSource, test: ImageSource, transform, linear: bool = False,
                      k: int = 200, num_workers: int = 2, device: str = "cpu", progress: bool = False) -> EvalResult:
    trf, try_ = extract_features(backbone, train, transform, num_workers=num_workers, device=device, progress=progress)
    tef, tey = extract_features(backbone, test, transform, num_workers=num_workers, device=device, progress=progress)
    return EvalResult(knn_top1(trf, try_, tef, tey, k=k), linear_top1(trf, try_, tef, tey) if linear else None)
