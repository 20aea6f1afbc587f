"""`semipairs review` in a real browser: Debian's chromium driven by Playwright against the real server
(a subprocess), judging with the keyboard and the grid, reloading, and publishing the reviewed cut."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from semipairs.dataset import load
from semipairs.review import estimate, read_log, reviews_dir
from tests.browser import chromium
from tests.conftest import labelled_pairs

SCREENSHOT = os.environ.get("SEMIPAIRS_SCREENSHOT")  # where to keep the page's picture (docs/review.png)


@pytest.fixture()
def server(tmp_path, cifar_folder):
    path = labelled_pairs(cifar_folder, tmp_path, n_pairs=120)
    proc = subprocess.Popen([sys.executable, "-m", "semipairs.cli", "review", str(path), "--no-browser", "--reviewer", "ann"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the address comes first, before the server blocks
    m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
    if m is None:
        proc.kill()
        pytest.fail(f"no address printed: {line!r} {proc.stderr.read()}")
    yield path, m.group(1)
    proc.terminate()
    proc.wait(timeout=20)


def progress(page) -> int:
    return int(re.search(r"you: (\d+) judged", page.inner_text("#progress")).group(1))


def wait_judged(page, n: int) -> None:
    page.wait_for_function(f"/you: {n} judged/.test(document.getElementById('progress').textContent)", timeout=15_000)


def test_the_token_guards_the_api(server):
    _, url = server
    base = url.split("?")[0]
    for path in ("", "api/state", "img/0/anchor"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=10)
        assert info.value.code == 403
    state = json.load(urllib.request.urlopen(base + "api/state?" + url.split("?")[1], timeout=10))
    assert state["dataset"]["pairs"] == 120 and state["next"][0]["pair_id"] >= 0


def test_judge_reload_grid_and_publish_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    path, url = server
    ds = load(path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        page.wait_for_function("document.getElementById('a').naturalWidth > 0", timeout=15_000)  # the image is served
        first = page.inner_text("#pmeta")
        for key, n in [("s", 1), ("d", 2), ("s", 3), (" ", 4), ("u", 5)]:
            page.keyboard.press(key)
            wait_judged(page, n)
        page.keyboard.press("z")  # undo the "can't tell"
        wait_judged(page, 4)
        shown = page.inner_text("#pmeta")
        page.reload()
        wait_judged(page, 4)  # state kept across a reload: same count, same next pair
        assert page.inner_text("#pmeta") == shown != first
        assert "%" in page.inner_text("#prec")
        for n in range(5, 13):  # past ten answers the page asks one pair again
            page.keyboard.press("s")
            wait_judged(page, n)
        page.keyboard.press("g")
        page.wait_for_selector("#grid .g img")
        tiles = page.query_selector_all("#grid .g")
        assert len(tiles) == 12
        tiles[0].click()
        tiles[5].click()
        page.keyboard.press("Enter")
        page.wait_for_function("/you: (2[4-9]|3\\d) judged/.test(document.getElementById('progress').textContent)",
                               timeout=15_000)
        page.keyboard.press("g")
        page.fill("#target", "0.8")
        page.wait_for_function("document.getElementById('cut').textContent.length > 0")
        page.fill("#version", "1.1.0")
        page.click("#publish")
        page.wait_for_function("/published 1.1.0/.test(document.getElementById('pubmsg').textContent)", timeout=60_000)
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        if SCREENSHOT:
            Path(SCREENSHOT).write_bytes((tmp_path / "review.png").read_bytes())
        browser.close()

    log = read_log(reviews_dir(ds) / "ann.jsonl", ds)
    v = log.verdict
    assert sum(x == "different" for x in v.values()) == 3 and sum(x == "skip" for x in v.values()) == 1
    assert len(log.repeats) == 1 and "unsure" not in v.values()
    est = estimate(ds)
    child = load(ds.path.parent / "1.1.0")
    r = child.manifest.review
    assert child.manifest.parent.version == "1.0.0" and r.judged == est.judged and r.rejected == 3
    assert len(child) == len(ds) - 3 and r.threshold is None
    assert (tmp_path / "review.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
