"""Times the default `semipairs quickstart` (target: about 3 minutes on a 2-core CPU) and keeps its table.

    python bench/quickstart.py --out bench/out/quickstart.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import emit, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--method", default=None, help="quickstart --method (default: the quickstart's own)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sp-bench-qs-"))
    t = time.perf_counter()
    method = ["--method", args.method] if args.method else []
    env = {**os.environ, "SEMIPAIRS_CACHE": str(work / "cache")}  # cold, as for a new user: decode and precision check
    proc = subprocess.run(["semipairs", "quickstart", "--out", str(work), "--json", *method], capture_output=True, text=True,
                          check=True, env=env)
    seconds = time.perf_counter() - t
    res = json.loads(proc.stdout)
    rows = [{k: v for k, v in r.items() if k != "checkpoint"} for r in res["rows"]]
    emit({"benchmark": "quickstart", "machine": machine(), "wall_seconds": round(seconds, 1), "target_seconds": 180,
          "steps_per_run": res["steps_per_run"], "rows": rows}, args.out)


if __name__ == "__main__":
    main()
