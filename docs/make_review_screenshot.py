"""Drive `semipairs review` on a real pair dataset in chromium, answering from the labels stored in its pair
table (a stand-in for a person), and save the page as docs/review.png; print the page's estimate against the
label precision.

    python docs/make_review_screenshot.py STORE/NAME/VERSION --judgments 60 --out docs/review.png
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from semipairs.dataset import load  # noqa: E402
from tests.browser import chromium  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--judgments", type=int, default=60)
    ap.add_argument("--out", default="docs/review.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    ds = load(args.dataset)
    t = ds.table
    right = (t["anchor_label"] == t["positive_label"]).to_numpy(dtype=bool)
    reviews = Path(tempfile.mkdtemp(prefix="review-demo-"))
    proc = subprocess.Popen([sys.executable, "-m", "semipairs.cli", "review", str(ds.path), "--no-browser",
                             "--reviews", str(reviews), "--reviewer", "demo"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://\S+)", proc.stdout.readline()).group(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            for i in range(args.judgments):
                page.wait_for_function(f"/you: {i} judged/.test(document.getElementById('progress').textContent)")
                pid = int(re.search(r"pair (\d+)", page.inner_text("#pmeta")).group(1))
                page.keyboard.press("s" if right[pid] else "d")
            page.wait_for_function(f"/you: {args.judgments} judged/.test(document.getElementById('progress').textContent)")
            page.fill("#target", "0.6")
            page.wait_for_timeout(500)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    est = json.loads(subprocess.run([sys.executable, "-m", "semipairs.cli", "review", str(ds.path), "--reviews",
                                     str(reviews), "--estimate", "--json"], capture_output=True, text=True, check=True).stdout)
    print(json.dumps({"judged": est["judged"], "estimate": est["precision"], "low": est["low"], "high": est["high"],
                      "label_precision": float(right.mean()), "screenshot": args.out}, indent=1))


if __name__ == "__main__":
    main()
