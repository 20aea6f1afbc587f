"""Augmentation recipes with torchvision transforms v2: MoCo-v2, its small-image (32 px) variant,
SimSiam's (the evaluation view lives in ``semipairs.views``). A recipe maps one PIL image to one augmented
tensor view."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from semipairs.views import CIFAR, IMAGENET, evaluation, stats_for  # noqa: F401 - the evaluation view's home


def moco_v2(size: int = 224) -> v2.Compose:
    """MoCo-v2 (Chen et al. 2020): crop 0.2-1, jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale 0.2, blur 0.5, flip.
    For small images (<= 64 px) blur is left out, as in the CIFAR recipes of solo-learn and lightly."""
    ops = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if size > 64:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=2 * (size // 20) + 1, sigma=(0.1, 2.0))], p=0.5))
    ops += [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats_for(size))]
    return v2.Compose(ops)


def simsiam(size: int = 224) -> v2.Compose:
    """SimSiam (Chen & He 2021) trains with MoCo-v2's recipe (its paper's section 4 augmentations)."""
    return moco_v2(size)


# SimCLR, MSF and WCL: the batched path uses MoCo-v2's views too
RECIPES = {"moco": moco_v2, "simsiam": simsiam, "simclr": moco_v2, "msf": moco_v2, "wcl": moco_v2}
