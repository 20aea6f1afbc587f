"""Checkpoint files: plain tensors and builtins only, loaded with ``torch.load(weights_only=True)``.

Layout: ``{"semipairs_checkpoint": 1, "backbone_spec": {...}, "backbone": state_dict, ...}``; the
training loop adds its own entries (momentum encoder, queue, optimizer, RNG states) beside these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semipairs import faults
from semipairs.atomic import atomic_write
from semipairs.backbones import BackboneSpec, backbone_state, build_backbone
from semipairs.errors import InvalidValueError, SemipairsError

CHECKPOINT_VERSION = 1


class _WriteErrors:
    """A file that remembers the OSError of a failed write: torch.save reports a full disk as a RuntimeError
    about stream positions ("[enforce fail at inline_container.cc] unexpected pos"), losing the cause."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic write (``semipairs.atomic``): a reader never sees half a checkpoint, and a failed write (disk full,
    quota) is a ``StoreError`` naming the file, the last good checkpoint left in place."""
    with atomic_write(path) as f:
        sink = _WriteErrors(f)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None  # atomic_write names the path and removes its temp
        faults.point("checkpoint.write")  # written, not yet renamed over the last good one


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint holding pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors carry the reason
        raise InvalidValueError(f"{path}: refused or unreadable checkpoint (only tensors and builtins load): {exc}") from None
    if not isinstance(state, dict) or "backbone" not in state or "backbone_spec" not in state:
        raise InvalidValueError(f"{path}: not a semipairs training checkpoint (needs 'backbone' and 'backbone_spec')")
    return state


def backbone_checkpoint(backbone: nn.Module, spec: BackboneSpec, **extra: Any) -> dict[str, Any]:
    """The entries every checkpoint holds, plus ``extra`` (a training run adds its model, optimizer, RNG...)."""
    return {"semipairs_checkpoint": CHECKPOINT_VERSION, "backbone_spec": spec.to_dict(),
            "backbone": backbone_state(backbone), **extra}


def backbone_from_state(state: dict[str, Any], key: str = "backbone") -> tuple[nn.Module, BackboneSpec, int]:
    """The backbone stored under ``key`` (``backbone`` or MoCo's ``teacher``) of a loaded checkpoint, in eval mode."""
    spec = BackboneSpec(**state["backbone_spec"])
    model, dim = build_backbone(spec)
    model.load_state_dict(state[key])
    return model.eval(), spec, dim


def load_backbone(path: str | Path) -> tuple[nn.Module, BackboneSpec, int]:
    """The backbone of a checkpoint, in eval mode: (model, spec, feature dim)."""
    return backbone_from_state(load_checkpoint(path))


def trained_on(state: dict[str, Any]) -> dict[str, str] | None:
    """The pair dataset (name, version, content_hash) a checkpoint was trained with, or None. Checkpoints written
    before the trainer recorded it name the dataset's path in their config: read it there while it still loads."""
    if state.get("pairs_dataset"):
        return dict(state["pairs_dataset"])
    path = (state.get("config") or {}).get("pairs")
    if not path:
        return None
    try:
        from semipairs.dataset import PairDataset

        return PairDataset(path).manifest.ref().model_dump()
    except (SemipairsError, OSError):  # moved or deleted since: the lineage is unknown, not an error
        return None


def rng_state() -> dict:
    """Every RNG a run depends on, as tensors and builtins (loadable with weights_only=True)."""
    import random

    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
