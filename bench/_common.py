"""Benchmark helpers: best-of-n timing, peak RSS of a child process, CIFAR-10 extraction, JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("SEMIPAIRS_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Minimum wall time of ``repeat`` calls (the least disturbed run on a shared machine)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> dict:
    """Where a figure came from; ``cpu_flags`` says which CPU kind (AVX2 only, or native bf16: never compare across)."""
    import torch

    from semipairs.precision import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_flags": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    # an emulated CPU kind (a native-bf16 host run as AVX2) says so: its figures are not the host's
    limits = {k: v for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if (v := os.environ.get(k))}
    return {**info, "isa_limits": limits} if limits else info


def cifar_tar_images(split: str = "test", limit: int | None = None) -> list[tuple[str, int, bytes]]:
    """(key, label, jpeg bytes) read straight from the shared tar."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    out = []
    with tarfile.open(CIFAR / f"cifar10-{split}.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                _, cls, fname = m.name.split("/")
                out.append((f"{cls}/{fname[:-4]}", classes.index(cls), tar.extractfile(m).read()))
                if limit and len(out) >= limit:
                    break
    return out


def extract_cifar(split: str, dest: Path) -> Path:
    """ImageFolder copy of a split (done once per destination)."""
    root = dest / f"cifar10-{split}"
    marker = root / ".complete"
    if not marker.exists():
        for key, _, data in cifar_tar_images(split):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / f"{key}.jpg").write_bytes(data)
        marker.touch()
    return root


def run_child(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; (its own peak RSS in MB, its stdout without the RSS line)."""
    # VmHWM is this process's own high-water mark; ru_maxrss would start at the (large) parent's RSS, which a
    # forked child inherits across exec
    probe = ("\nimport re as _re; print('PEAK_RSS_KB', _re.search(r'VmHWM:\\s+(\\d+)', "
             "open('/proc/self/status').read()).group(1))")
    proc = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    return int(lines[-1].split()[1]) / 1024, "\n".join(lines[:-1])


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
