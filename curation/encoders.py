"""Encoders from one spec string, each with its own preprocessing.

``open_clip:MODEL[/PRETRAINED_TAG_OR_FILE]``, ``timm:NAME[/FILE]``, ``torchvision:NAME[/WEIGHTS_OR_FILE]``,
``ckpt:PATH`` (a training checkpoint's backbone) and ``pixels[:SIZE]`` (downsampled pixels, the no-model
baseline). Pretrained tags go through the libraries' own download code; a local file works offline and
its sha256 goes into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from semipairs.errors import SemipairsError
from semipairs.hashing import sha256_file
from semipairs.manifest import EncoderInfo
from semipairs.views import IMAGENET, evaluation, stats_for

IMAGENET_MEAN, IMAGENET_STD = IMAGENET


class EncoderError(SemipairsError):
    """Unknown encoder spec, missing weights file or missing optional library."""


@dataclass
class Encoder:
    """A frozen feature extractor: ``transform`` turns a PIL image into a tensor, ``model`` maps a batch
    to features. ``fingerprint`` keys the embedding cache."""

    info: EncoderInfo
    model: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    fingerprint: str
    # When ``transform`` is the decoded cache's geometry at this size, then /255 and ``normalise`` (mean, std):
    # the embedding stage may then feed batches straight from ``semipairs.decoded``.
    decoded_size: int | None = None
    normalise: tuple | None = None
    # A training checkpoint trained with pairs: that dataset (name, version, content_hash), the parent of what it mines.
    trained_on: dict[str, str] | None = None


class PixelEncoder(nn.Module):
    """Flattened pixels minus their mean: the no-model baseline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return x - x.mean(dim=1, keepdim=True)


class _OpenClipImage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def _is_file(arg: str) -> bool:
    return arg.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")) or Path(arg).expanduser().is_file()


def _checked_file(spec: str, arg: str) -> Path:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise EncoderError(f"{spec}: weights file {path} not found")
    return path


def _load_state(spec: str, path: Path) -> dict:
    """A weights file's state dict (tensors only: ``weights_only=True``); a refused file names itself."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, truncation, wrong format: all name the file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderError(f"{spec}: weights file {path} is not a plain tensor state dict ({reason[:200]})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


RANDOM = "random"  # explicit, seeded random weights: `NAME/random` (seed 0) or `NAME/random-SEED`


def _random_seed(spec: str, tag: str) -> int | None:
    """The seed of a ``random[-SEED]`` tag, None for any other tag."""
    if tag != RANDOM and not tag.startswith(RANDOM + "-"):
        return None
    try:
        return int(tag.removeprefix(RANDOM).removeprefix("-") or 0)
    except ValueError:
        raise EncoderError(f"{spec}: {tag!r} is not random or random-SEED (an integer seed)") from None


def _no_weights(spec: str) -> EncoderError:
    return EncoderError(f"{spec} names no weights: add a pretrained tag (e.g. /DEFAULT), a local file "
                        f"(/path/to/weights.pt), or /{RANDOM} (or /{RANDOM}-SEED) for seeded random weights")


def _download_failed(spec: str, exc: Exception) -> EncoderError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return EncoderError(f"{spec}: cannot fetch the pretrained weights ({type(exc).__name__}: {reason}); "
                        "offline, pass a local weights file instead")


def default_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])


def _require(module: str, extra: str = "models"):
    from semipairs.extras import require_extra

    return require_extra(module, extra)


def load_encoder(spec: str, image_size: int | None = None) -> Encoder:
    """Build the encoder a spec names, in eval mode on CPU. ``image_size`` overrides the input size."""
    kind, _, arg = spec.partition(":")
    builder = BUILDERS.get(kind)
    if builder is None or (kind != "pixels" and not arg):
        raise EncoderError(
            f"unknown encoder spec {spec!r}: use open_clip:MODEL[/TAG_OR_FILE], timm:NAME[/FILE], "
            "torchvision:NAME[/WEIGHTS_OR_FILE|random], ckpt:PATH or pixels[:SIZE]"
        )
    return builder(spec, arg, image_size)


def _pixels(spec: str, arg: str, image_size: int | None) -> Encoder:
    if arg and not arg.isdigit():
        raise EncoderError(f"{spec}: pixels takes a size in pixels (pixels:16), not {arg!r}")
    size = image_size or (int(arg) if arg else 16)
    tf = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])
    info = EncoderInfo(kind="pixels", name=f"pixels{size}", dim=3 * size * size, image_size=size)
    return Encoder(info, PixelEncoder().eval(), tf, f"pixels:{size}", decoded_size=size if size <= 64 else None)


def _torchvision(spec: str, arg: str, image_size: int | None) -> Encoder:
    import torchvision

    model_name, _, weights = arg.partition("/")
    try:
        builder = torchvision.models.get_model_builder(model_name)
    except ValueError:
        raise EncoderError(f"{spec}: unknown torchvision model {model_name!r}") from None
    if not weights:
        raise _no_weights(spec)
    tv_weights, sha = None, None
    seed = _random_seed(spec, weights)
    if seed is not None:
        torch.manual_seed(seed)  # the spec names the seed, so the cache key names the exact weights
        model, pretrained = builder(weights=None), f"{RANDOM}-{seed}"
    elif _is_file(weights):
        path = _checked_file(spec, weights)
        model = builder(weights=None)
        model.load_state_dict(_load_state(spec, path), strict=False)
        sha, pretrained = sha256_file(path), path.name
    else:
        try:
            full = weights if "." in weights else f"{_enum_name(model_name)}.{weights}"
            tv_weights = torchvision.models.get_weight(full)
        except (ValueError, AttributeError, KeyError):
            raise EncoderError(f"{spec}: unknown torchvision weights {weights!r}") from None
        try:
            model = builder(weights=tv_weights)  # downloads through torchvision's own code
        except Exception as exc:  # noqa: BLE001 - URLError, HTTP errors, hash mismatches
            raise _download_failed(spec, exc) from None
        pretrained = str(tv_weights)
    _strip_classifier(model)
    size = image_size or 224
    tf = tv_weights.transforms() if tv_weights is not None and image_size is None else default_transform(size)
    return _finish(spec, "torchvision", model_name, pretrained, sha, model, tf, size)


def _timm(spec: str, arg: str, image_size: int | None) -> Encoder:
    timm = _require("timm")
    model_name, _, weights = arg.partition("/")
    file = _checked_file(spec, weights) if weights else None
    overlay = {"pretrained_cfg_overlay": {"file": str(file)}} if file else {}
    try:  # pretrained: timm's own loader reads the file, or downloads the tag's weights
        model = timm.create_model(model_name, pretrained=True, num_classes=0, **overlay)
    except Exception as exc:  # noqa: BLE001 - unknown names, missing network, bad files
        msg = f"{spec}: cannot build timm model ({type(exc).__name__}: {exc}); offline, pass a local file"
        raise EncoderError(msg) from None
    cfg = timm.data.resolve_data_config({}, model=model)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    tf = timm.data.create_transform(**cfg)
    sha = sha256_file(file) if file else None
    return _finish(spec, "timm", model_name, file.name if file else None, sha, model, tf, cfg["input_size"][-1])


def _open_clip(spec: str, arg: str, image_size: int | None) -> Encoder:
    open_clip = _require("open_clip")
    model_name, _, weights = arg.partition("/")
    if not weights:
        raise _no_weights(spec)
    pretrained, sha = weights, None
    seed = _random_seed(spec, weights)
    if seed is not None:
        torch.manual_seed(seed)
        pretrained = None
    elif _is_file(pretrained):
        file = _checked_file(spec, pretrained)
        sha, pretrained = sha256_file(file), str(file)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - unknown names, missing network, bad files
        raise EncoderError(f"{spec}: cannot build open_clip model ({type(exc).__name__}: {exc})") from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    name = Path(pretrained).name if sha else (pretrained or f"{RANDOM}-{seed}")
    return _finish(spec, "open_clip", model_name, name, sha, _OpenClipImage(model), preprocess, int(size))


def _ckpt(spec: str, arg: str, image_size: int | None) -> Encoder:
    from semipairs.checkpoint import backbone_from_state, load_checkpoint, trained_on

    path = _checked_file(spec, arg)
    try:
        state = load_checkpoint(path)
        model, bspec, _ = backbone_from_state(state)
    except ValueError as exc:
        raise EncoderError(str(exc)) from None
    size = image_size or bspec.image_size
    enc = _finish(spec, "ckpt", bspec.arch, path.name, sha256_file(path), model, evaluation(size), size)
    enc.decoded_size, enc.normalise = size, stats_for(size)  # the trainer's evaluation view, as the trainer fed it
    enc.trained_on = trained_on(state)
    return enc


BUILDERS: dict[str, Callable[[str, str, int | None], Encoder]] = {
    "pixels": _pixels, "torchvision": _torchvision, "timm": _timm, "open_clip": _open_clip, "ckpt": _ckpt,
}


def _enum_name(model_name: str) -> str:
    import torchvision

    return torchvision.models.get_model_weights(model_name).__name__


def _strip_classifier(model: nn.Module) -> None:
    for attr in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return


def _finish(spec, kind, name, pretrained, sha, model, tf, size) -> Encoder:
    model.eval()
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, size, size)).flatten(1).shape[1])
    info = EncoderInfo(kind=kind, name=name, pretrained=pretrained, weights_sha256=sha, dim=dim, image_size=size)
    return Encoder(info, model, tf, f"{spec}|{sha}|{size}")
