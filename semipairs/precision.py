"""Numeric precision, chosen once per command, and only where it is shown to compute the same thing.

``auto`` considers bf16 autocast only where the hardware computes bf16 natively (a CUDA GPU, or a CPU
with avx512_bf16 / AMX whose torch dispatches AVX-512 kernels): on other CPUs autocast emulates bf16 and
runs 1.5-25x slower than fp32 (AVX2, ResNet-18 MoCo step). There, ``auto`` weighs fp32 in channels_last
against plain fp32 instead: the same arithmetic in another layout, which oneDNN's AVX2 convolutions run
1.4x faster (ResNet-18 SimCLR step at 32 px, batch 2 x 128: 1,080 -> 770 ms under AVX2 dispatch) and
AVX-512 ones no faster. ``select_precision`` runs one step of the *actual* model at the actual input size
in fp32 and in each other configuration, keeps those whose result agrees with fp32 (``agreement``; an fp32
layout must agree to fp32's own error) and, for ``auto``, the fastest of them; the decision is cached per
(model, input, torch version, CPU flags). Two reasons it must check:

- oneDNN's CPU convolutions have produced garbage weight gradients (|grad| up to 1e32, intermittently)
  under bf16 + channels_last where a feature map is 1x1 (torch 2.14.1, Sapphire Rapids): a 1x1 map is
  both contiguous and channels_last, so the backend can describe a buffer with the wrong layout (the
  same class as pytorch#95693 and the XPU fix of pytorch#190773). bf16 + channels_last is never used where
  a convolution sees or produces a 1x1 map, whatever the check says. fp32 in channels_last showed no such
  fault (ResNet-18 at 32 px, whose layer4 maps are 1x1: 23 of 23 steps within fp32's own error of the plain
  layout, AVX-512 and AVX2 dispatch, Sapphire Rapids) and is held to the tight check below.
- the CPU bf16 weight gradient of a *strided* convolution leaves uninitialised memory in the kernel taps
  that only ever cover padding (their true gradient is exactly 0): ResNet-18's layer4.0.conv1 (3x3,
  stride 2) on the 1x1 map of a 16 px input returned 255 ... 3e30 there in 11-20 of 20 trials, in either
  memory format, with oneDNN on or off (torch 2.14.1, AMD EPYC with avx512_bf16; ``padding_only_taps``
  gives the measured geometry). Such a convolution runs in fp32 inside the bf16 run (``fp32_modules``),
  the rest of the model in bf16, and the check then compares the whole step with fp32 as for any option.
- a check of one step is a sample: ``require_finite`` guards every step that follows.

Losses always run in fp32 (``full_precision``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from semipairs.config import PRECISIONS
from semipairs.errors import InvalidValueError

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must beat fp32 by this much for ``auto`` to take it: fp32 is the reference, timing on a shared
# 2-core machine swings by ~10%, and a tie is not worth 8 mantissa bits.
_SPEEDUP_MARGIN = 1.15
# Bumped when the rules above change, so a choice cached under older rules is checked again.
_RULES = 3


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    if not sys.platform.startswith("linux"):
        return set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises avx512_bf16 or amx_bf16."""
    return any(f in cpu_flags(cpuinfo) for f in _BF16_FLAGS)


@functools.cache
def full_precision_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward runs ``cls``'s own forward in fp32 inside bf16 autocast (input cast to
    fp32, autocast off): what ``Precision.fp32_modules`` are switched to. Same parameters and state_dict keys;
    any convolution class works (timm's padded or weight-standardised ones included)."""
    if getattr(cls, "full_precision", False):
        return cls

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with full_precision(x.device.type):
            return cls.forward(self, x.float(), *args, **kwargs)
    return type(f"FullPrecision{cls.__name__}", (cls,), {"forward": forward, "full_precision": True,
                                                         "__module__": __name__, "__doc__": full_precision_class.__doc__})


@dataclass(frozen=True)
class Precision:
    """What a command runs in: ``name`` fp32 (autocast off) or bf16 (autocast), with or without channels_last,
    and the modules (by name) that compute in fp32 inside a bf16 run; ``reason`` says why it was chosen when a
    check decided."""

    name: str
    device_type: str
    channels_last: bool = False
    reason: str = ""
    fp32_modules: tuple[str, ...] = ()

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def label(self) -> str:
        return self.name + ("+channels_last" if self.channels_last else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` in this precision's memory format, its ``fp32_modules`` switched to their fp32 class in place
        (parameters, names and state_dict keys unchanged)."""
        if self.bf16:
            modules = dict(model.named_modules())
            for name in self.fp32_modules:
                if name in modules:
                    modules[name].__class__ = full_precision_class(type(modules[name]))
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def _native_bf16(device_type: str) -> bool:
    """CUDA, or a CPU with native bf16 whose torch dispatches AVX-512 kernels (``ATEN_CPU_CAPABILITY=avx2``
    runs a native-bf16 CPU as the AVX2 kind)."""
    if device_type == "cuda":
        return True
    return (device_type == "cpu" and cpu_has_native_bf16()
            and torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2"))


def candidates(name: str, device: str) -> list[Precision]:
    """Configurations to try, preferred first; fp32 (the reference) is always last. An explicit ``fp32`` is
    the plain layout only; ``auto`` without native bf16 weighs fp32 in channels_last on the CPU."""
    if name not in PRECISIONS:
        raise InvalidValueError(f"precision {name!r}: use one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    fp32 = Precision("fp32", device_type)
    if name == "fp32":
        return [fp32]
    if name == "auto" and not _native_bf16(device_type):
        return [Precision("fp32", device_type, True), fp32] if device_type == "cpu" else [fp32]
    return [Precision("bf16", device_type, True), Precision("bf16", device_type, False), fp32]


def resolve_precision(name: str, device: str) -> Precision:
    """The first candidate, unchecked: for callers with no model to check (prefer ``select_precision``)."""
    return candidates(name, device)[0]


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite: one fused max-abs per tensor and one sync, so a training
    loop can afford it every step (the max of |x| is finite exactly when every element is; it cannot overflow)."""
    tensors = [t for t in tensors if t is not None]
    return not tensors or bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, ord=math.inf))).all())


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off: losses and similarity matrices run in fp32 inside a bf16 forward."""
    return torch.autocast(device_type, enabled=False)


# Tolerances of ``agreement``. Healthy bf16 vs fp32 at initialisation (ResNet-18, batch 8, 16 and 32 px, both
# stems, MoCo-v2 / SimCLR / SimSiam, 4 seeds each, AVX2 emulation): weight tensors (convolutions, linear
# layers) cosine 0.64-0.94 to fp32 (SimSiam lowest: its loss is nearly flat at init, so rounding noise is a
# large share of the gradient), every tensor's norm 0.79-1.33x fp32's, all together cosine >= 0.67. 1-D
# tensors (BatchNorm, biases) are sums of nearly cancelling terms: their direction is noise (cosine down to
# 0.25), so only their norm is held. A wrong kernel gives non-finite values, a norm off by orders of
# magnitude (|grad| 1e32 was seen), or a weight gradient unrelated to fp32's (cosine ~0): these bounds sit
# about halfway between.
MIN_WEIGHT_COSINE = 0.3
NORM_RATIO = (1 / 3, 3.0)
MIN_TOTAL_COSINE = 0.3
# fp32 in another memory format computes the same sums in another order: every tensor stays within fp32's own
# error of the plain layout (ResNet-18, batch 256: relative distance <= 0.007, as far as plain fp32 is from
# fp64; cosine > 0.9999), so a weight gradient or the whole step short of near-identity is a wrong kernel.
MIN_COSINE_FP32 = 0.99


def agreement(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor],
              names: Sequence[str] | None = None, fp32: bool = False) -> str | None:
    """None when ``other`` computes the same thing as ``reference`` within bf16's error (``fp32``: within the
    error of another fp32 summation order, for a layout change), else why not."""
    min_weight, min_total = (MIN_COSINE_FP32, MIN_COSINE_FP32) if fp32 else (MIN_WEIGHT_COSINE, MIN_TOTAL_COSINE)
    names = names or [f"tensor {i}" for i in range(len(reference))]
    total = [0.0, 0.0, 0.0]  # dot, |ref|^2, |other|^2
    for name, r, o in zip(names, reference, other):
        dims = r.dim()
        r, o = r.detach().double().flatten(), o.detach().double().flatten()  # a 1e30 gradient overflows fp32 norms
        if not bool(torch.isfinite(o).all()):
            return f"{name} is not finite"
        rn, on = float(r.norm()), float(o.norm())
        total[0] += float(r @ o)
        total[1] += rn * rn
        total[2] += on * on
        if rn < 1e-12:  # a zero reference (a frozen or unused part): nothing to compare with
            continue
        ratio = on / rn
        if not NORM_RATIO[0] <= ratio <= NORM_RATIO[1]:
            return f"{name}: norm {ratio:.3g}x the fp32 one"
        if dims >= 2 and (cos := float(F.cosine_similarity(r, o, dim=0))) < min_weight:
            return f"{name}: cosine {cos:.4f} to the fp32 one"
    cos = total[0] / math.sqrt(max(total[1] * total[2], 1e-30))
    return None if cos >= min_total else f"all tensors together: cosine {cos:.4f} to fp32"


def padding_only_taps(conv: nn.modules.conv._ConvNd, spatial: Sequence[int]) -> bool:
    """True when ``conv`` is strided along a dimension in which some kernel tap never meets the input (it only
    covers padding) for an input of size ``spatial``. Measured on the CPU bf16 kernels (torch 2.14.1, AMD EPYC
    avx512_bf16, 12 trials per shape over maps 1-8, kernels 3 and 5, strides 1-3, paddings 0-2): every bad
    weight gradient had such a tap and a stride > 1 (k3 s2 on a 1x1 map, k3 s3 on 2x2, k5 s2 on 1x1 ...);
    none of the 62 shapes without one was bad; stride 1 with only-padding taps (k3 s1 on 1x1) was clean
    (``bench/bf16_conv.py`` reruns the sweep and checks that this rule covers every bad shape).
    The rule also takes k3 s2 on a 2x2 map (ResNet-18's layer4.0.conv1 at 32 px), clean here but of the same
    kind: one convolution in fp32 costs little."""
    if isinstance(conv.padding, str):  # 'same' is stride 1 only; 'valid' pads nothing
        return False
    for size, k, s, p, d in zip(spatial, conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if s == 1 or out < 1:
            continue
        for i in range(k):  # tap i reads positions o*s - p + i*d, o in [0, out): live if one lies in [0, size)
            first = max(0, -(-(p - i * d) // s))
            last = min(out - 1, (size - 1 + p - i * d) // s)
            if first > last:
                return True
    return False


@dataclass
class ConvolutionWatch:
    """What the convolutions of a watched model met in its forward passes: module names."""

    unit_maps: list[str]  # saw or produced a 1x1 map
    padding_taps: list[str]  # ``padding_only_taps`` at the input they saw


@contextlib.contextmanager
def watch_convolutions(model: nn.Module):
    """Yields a ``ConvolutionWatch`` that fills as the convolutions of ``model`` (or of a deep copy made inside
    the block: hooks are copied with the module) run."""
    seen = ConvolutionWatch([], [])

    def hook(name: str):
        def record(m, inputs, output) -> None:
            if any(t.dim() >= 4 and math.prod(t.shape[2:]) == 1 for t in (inputs[0], output)) \
                    and name not in seen.unit_maps:
                seen.unit_maps.append(name)
            if padding_only_taps(m, inputs[0].shape[2:]) and name not in seen.padding_taps:
                seen.padding_taps.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def padding_tap_modules(model: nn.Module, forward: Callable[[], object]) -> tuple[str, ...]:
    """The convolutions of ``model`` that the padding-only-tap rule takes in one no-grad ``forward()`` at the run's
    size: the ``fp32_modules`` ``select_precision`` sets on CPU, for code that builds a ``Precision`` by hand."""
    with watch_convolutions(model) as seen, torch.no_grad():
        forward()
    return tuple(seen.padding_taps)


def _synchronizer(device_type: str) -> Callable[[], None]:
    """What makes a timing honest on ``device_type``: GPU kernels run asynchronously, CPU ones do not."""
    return torch.cuda.synchronize if device_type == "cuda" else (lambda: None)


def _cache_file() -> Path:
    from semipairs.decoded import cache_root

    return cache_root() / "precision.json"


def _cache_key(requested: str, device: str, key: str) -> str:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else ""
    text = json.dumps([requested, device, key, torch.__version__, flags, gpu, _RULES])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(entry_key: str, entry: dict) -> None:
    from semipairs.atomic import write_text
    from semipairs.errors import StoreError

    data = _read_cache()
    data[entry_key] = entry
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_text(_cache_file(), json.dumps(data, indent=1))
    except (OSError, StoreError):
        pass  # a cache that cannot be written only costs the check next time


def select_precision(requested: str, device: str, probe: Callable[[Precision], Sequence[torch.Tensor]], *,
                     key: str, model: nn.Module | None = None, names: Sequence[str] | None = None,
                     cache: bool | None = None, timer: Callable[[Precision], float] | None = None) -> Precision:
    """The precision to run in. ``probe(p)`` runs the actual model once in ``p`` from the same state and input
    and returns what must agree (gradients of a training step, or features); ``key`` names the model and
    input size for the cache; ``model`` (when given) is watched for 1x1 maps and padding-only taps.
    ``auto`` picks the fastest option that agrees: ``timer(p)`` (seconds of one warm step at the size the
    run will use) when given, else a second call of ``probe``. ``reason`` of the result says why, and is
    non-empty when a configuration was refused or adjusted. ``SEMIPAIRS_PRECISION_CACHE=0`` always checks."""
    cache = os.environ.get("SEMIPAIRS_PRECISION_CACHE", "1") != "0" if cache is None else cache
    options = candidates(requested, device)
    if len(options) == 1:
        return options[0]
    entry_key = _cache_key(requested, device, key)
    if cache and (hit := _read_cache().get(entry_key)):
        saved = hit["precision"]
        return Precision(**{**saved, "device_type": torch.device(device).type,
                            "fp32_modules": tuple(saved.get("fp32_modules", ()))})
    timings: dict[str, float] = {}
    timing = requested == "auto"  # an explicit bf16 takes the first that agrees: nothing to time

    def seconds(p: Precision) -> float:
        sync = _synchronizer(p.device_type)
        sync()
        t = time.perf_counter()
        probe(p)  # the first call paid for kernel creation; this one is warm
        sync()
        return time.perf_counter() - t

    def run(p: Precision) -> Sequence[torch.Tensor]:
        out = probe(p)
        if timing:
            timings[p.label] = timer(p) if timer is not None else seconds(p)
        return out

    fp32 = options[-1]
    with watch_convolutions(model if model is not None else nn.Module()) as seen:
        reference = run(fp32)
    fp32_modules = tuple(seen.padding_taps) if fp32.device_type == "cpu" else ()
    refused, passed = [], []
    for p in options[:-1]:
        if p.bf16 and p.channels_last and seen.unit_maps:
            refused.append(f"{p.label}: a convolution sees a 1x1 map (a layout oneDNN gets wrong)")
            continue
        p = replace(p, fp32_modules=fp32_modules if p.bf16 else ())
        why = agreement(reference, run(p), names, fp32=not p.bf16)
        if why:
            refused.append(f"{p.label}: {why}")
        else:
            passed.append(p)
        if passed and not timing:
            break
    if not timing:
        chosen = passed[0] if passed else fp32
    else:
        fastest = min(passed, key=lambda p: timings[p.label], default=None)
        speedup = timings[fp32.label] / timings[fastest.label] if fastest else 0.0
        chosen = fastest if fastest and speedup >= _SPEEDUP_MARGIN else fp32
    figures = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timings.items())
    notes = refused
    if chosen.bf16 and chosen.fp32_modules:
        first = chosen.fp32_modules[0]
        more = f" and {len(chosen.fp32_modules) - 1} more" if len(chosen.fp32_modules) > 1 else ""
        notes = [*notes, f"{first}{more} in fp32 (a strided convolution with taps that only cover padding, "
                         "where CPU bf16 weight gradients are garbage)"]
    if chosen is fp32 and passed and requested == "auto":
        notes = [*notes, f"{' / '.join(p.label for p in passed)} is not faster here ({figures})"]
    chosen = replace(chosen, reason="; ".join(notes))
    if cache:
        _write_cache(entry_key, {"precision": asdict(chosen), "timings_s": timings, "key": key})
    return chosen


def training_probe(model: nn.Module, inputs: Sequence[torch.Tensor], device: str,
                   step: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]) -> Callable[[Precision], list]:
    """A probe for ``select_precision``: one forward/backward of a copy of ``model`` from its current state,
    the parameters' gradients as the result. ``step(model, inputs)`` returns the loss."""

    def probe(p: Precision) -> list[torch.Tensor]:
        m = p.prepare_model(copy.deepcopy(model).to(device))
        xs = [p.prepare_input(x.to(device)) for x in inputs]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            with p.autocast():
                loss = step(m, xs)
            loss.float().backward()
        return [loss.detach().float().reshape(1)] + [q.grad if q.grad is not None else torch.zeros_like(q)
                                                     for q in m.parameters() if q.requires_grad]
    return probe


def training_timer(model: nn.Module, make_inputs: Callable[[], Sequence[torch.Tensor]], device: str,
                   step: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]) -> Callable[[Precision], float]:
    """A ``timer`` for ``select_precision``: the faster of two warm forward/backward steps of a copy of ``model``
    on ``make_inputs()``, the run's batch (at batch 8 the ranking can invert, e.g. 16 px ResNet-18 on
    avx512_bf16), made only when a timing runs. The minimum, because timing noise on a shared machine only
    ever adds; one step flipped near-ties."""
    return _warm_timer(model, make_inputs, device, step, train=True)


def inference_timer(model: nn.Module, make_inputs: Callable[[], Sequence[torch.Tensor]],
                    device: str) -> Callable[[Precision], float]:
    """``training_timer`` for a feature extractor: the faster of two warm forwards (eval mode, no grad) at the
    caller's batch, the copy of the model made outside the timed part."""
    return _warm_timer(model, make_inputs, device, lambda m, xs: m(xs[0]), train=False)


def _warm_timer(model: nn.Module, make_inputs: Callable[[], Sequence[torch.Tensor]], device: str,
                step: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor], train: bool) -> Callable[[Precision], float]:
    def timer(p: Precision) -> float:
        m = p.prepare_model(copy.deepcopy(model).to(device))
        m.train(train)
        xs = [p.prepare_input(x.to(device)) for x in make_inputs()]
        sync = _synchronizer(p.device_type)
        times = []
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(train):
            for _ in range(3):  # the first pays for kernel creation
                sync()
                t = time.perf_counter()
                with p.autocast():
                    out = step(m, xs)
                if train:
                    out.float().backward()
                sync()
                times.append(time.perf_counter() - t)
        return min(times[1:])
    return timer


def inference_probe(model: nn.Module, inputs: torch.Tensor, device: str) -> Callable[[Precision], list]:
    """A probe for ``select_precision``: the features of ``model`` (eval mode, no grad), as one (N, D) tensor."""

    def probe(p: Precision) -> list[torch.Tensor]:
        m = p.prepare_model(copy.deepcopy(model).to(device).eval())
        with torch.no_grad(), p.autocast():
            out = m(p.prepare_input(inputs.to(device)))
        return [out.flatten(1).float()]
    return probe


def select_for_inference(requested: str, device: str, model: nn.Module, image_size: int, key: str,
                         batch_size: int = 256) -> Precision:
    """``select_precision`` for a feature extractor at ``image_size`` (eval, curate, refine): agreement on 8
    images, speed (for ``auto``) of a forward at the caller's ``batch_size`` (at most 64, which bounds the cost
    of timing a large encoder; batch 8 could rank the options the wrong way round, as it did for training)."""
    if len(options := candidates(requested, device)) == 1:
        return options[0]
    x = torch.randn(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    timed = min(batch_size, 64)

    def batch() -> list[torch.Tensor]:  # only when auto times the options
        return [torch.randn(timed, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))]
    return select_precision(requested, device, inference_probe(model, x, device), key=f"{key}@{image_size}:batch={timed}",
                            model=model, timer=inference_timer(model, batch, device))


def precision_note(p: Precision) -> str | None:
    """What a command tells the user (as a ``note:``) when the check refused a configuration, else None."""
    return f"precision {p.label}: {p.reason}" if p.reason else None
