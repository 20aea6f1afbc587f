"""Is the CPU bf16 convolution weight-gradient fault present on this machine and torch, and does the rule cover it?

For each convolution geometry (input map, kernel, stride, padding) it runs the weight gradient of a pure bf16
``conv2d`` ``--trials`` times against fp32 and counts the bad ones (non-finite, or off by more than 5% of
fp32's norm), next to what ``semipairs.precision.padding_only_taps`` says. The rule is right when every bad
geometry is one it flags. On a CPU without native bf16 the kernels are emulated and no fault is expected.

    python bench/bf16_conv.py --out docs/results/bf16-conv-fault.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, machine  # noqa: E402


def bad_trials(cin: int, cout: int, k: int, stride: int, pad: int, size: int, trials: int, batch: int) -> int:
    gen = torch.Generator().manual_seed(0)
    bad = 0
    for _ in range(trials):
        w = torch.randn(cout, cin, k, k, generator=gen).bfloat16().requires_grad_()
        x = torch.randn(batch, cin, size, size, generator=gen).bfloat16()
        F.conv2d(x, w, stride=stride, padding=pad).float().sum().backward()
        ref = w.detach().float().requires_grad_()
        F.conv2d(x.float(), ref, stride=stride, padding=pad).sum().backward()
        got = w.grad.float()
        bad += int(not bool(torch.isfinite(got).all()) or float((got - ref.grad).norm()) > 0.05 * float(ref.grad.norm()) + 1e-3)
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--channels", default="64,128", help="in,out channels of the convolution")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from semipairs.precision import cpu_has_native_bf16, padding_only_taps

    cin, cout = (int(c) for c in args.channels.split(","))
    rows = []
    for size, k, stride, pad in itertools.product([1, 2, 3, 4, 5, 8], [3, 5], [1, 2, 3], [0, 1, 2]):
        if pad >= k or size + 2 * pad < k:
            continue
        flagged = padding_only_taps(nn.Conv2d(cin, cout, k, stride=stride, padding=pad), (size, size))
        rows.append({"map": size, "kernel": k, "stride": stride, "padding": pad, "flagged": flagged,
                     "bad": bad_trials(cin, cout, k, stride, pad, size, args.trials, args.batch)})
    missed = [r for r in rows if r["bad"] and not r["flagged"]]
    emit({"benchmark": "bf16_conv_fault", "machine": machine(), "cpu_native_bf16": cpu_has_native_bf16(),
          "channels": [cin, cout], "batch": args.batch, "trials": args.trials,
          "fault_present": any(r["bad"] for r in rows), "bad_geometries": [r for r in rows if r["bad"]],
          "rule_missed": missed, "rule_covers_every_bad_geometry": not missed,
          "flagged_but_clean": sum(1 for r in rows if r["flagged"] and not r["bad"]), "geometries": len(rows)},
         args.out)


if __name__ == "__main__":
    main()
