"""The evaluation view of an image (resize, centre crop, normalise) and the normalisation statistics: the
part of the image recipe a checkpoint's reader needs (``ckpt:`` encoder, eval, refine), apart from the
training augmentations (``training/augment.py``)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


def stats_for(size: int) -> tuple:
    """Normalisation (mean, std): CIFAR's at <= 64 px, ImageNet's above."""
    return CIFAR if size <= 64 else IMAGENET


def evaluation(size: int = 224) -> v2.Compose:
    """Resize to S x S at <= 64 px; above, shorter side to S and centre crop (``semipairs.decoded``'s geometry)."""
    resize = [v2.Resize(size, antialias=True), v2.CenterCrop(size)] if size > 64 else [v2.Resize((size, size), antialias=True)]
    return v2.Compose([v2.ToImage(), *resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats_for(size))])
