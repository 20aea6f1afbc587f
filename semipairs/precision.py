"""Numeric precision, chosen once per command: ``auto`` is bf16 autocast + channels_last where the hardware
computes bf16 natively (a CUDA GPU, or a CPU with avx512_bf16 / AMX), fp32 elsewhere.

On a CPU without native bf16, autocast emulates it and runs slower than fp32, so ``auto`` reads the CPU's
feature flags instead of guessing. Losses always run in fp32 (see ``full_precision``).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises avx512_bf16 or amx_bf16 (Linux /proc/cpuinfo; False where unreadable)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(f in flags for f in _BF16_FLAGS)
    return False


@dataclass(frozen=True)
class Precision:
    """What a command runs in: ``dtype`` None means fp32 (autocast off)."""

    name: str
    device_type: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.bf16 else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.bf16 and x.dim() == 4 else x


def resolve_precision(name: str, device: str) -> Precision:
    """``auto`` -> bf16 on CUDA or a CPU with native bf16, fp32 elsewhere; ``bf16``/``fp32`` as asked."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: use one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if name == "auto":
        native = device_type == "cuda" or (device_type == "cpu" and cpu_has_native_bf16())
        name = "bf16" if native else "fp32"
    return Precision(name, device_type)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off: losses and similarity matrices run in fp32 inside a bf16 forward."""
    return torch.autocast(device_type, enabled=False)
