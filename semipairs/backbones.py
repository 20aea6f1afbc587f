"""Backbones: torchvision ResNets (with a CIFAR stem option) and any timm model, as feature extractors.

A backbone maps images to a flat feature vector (``out_dim``); heads live apart (heads.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from semipairs.errors import InvalidValueError
from semipairs.extras import require_extra


@dataclass(frozen=True)
class BackboneSpec:
    """What a checkpoint records to rebuild its backbone: ``arch`` is ``resnet18``, ``resnet50`` or
    ``timm:NAME``; ``cifar_stem`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 conv."""

    arch: str = "resnet18"
    cifar_stem: bool = False
    image_size: int = 224

    def to_dict(self) -> dict:
        return asdict(self)


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """(backbone without classifier, feature dim)."""
    if spec.arch.startswith("timm:"):
        timm = require_extra("timm", "models")
        model = timm.create_model(spec.arch.removeprefix("timm:"), pretrained=False, num_classes=0)
        return model, int(model.num_features)
    import torchvision

    if spec.arch not in ("resnet18", "resnet34", "resnet50"):
        raise InvalidValueError(f"unknown backbone {spec.arch!r}: use resnet18, resnet34, resnet50 or timm:NAME")
    model = torchvision.models.get_model(spec.arch, weights=None)
    if spec.cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
