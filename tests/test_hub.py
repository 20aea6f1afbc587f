"""Hub push / pull / load for real: huggingface_hub and datasets talk to a loopback Hub (tests/hub_server.py).

The client libraries read ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when they are imported, so every Hub
call runs in a child process (the ``semipairs`` CLI or a short script) with its own environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from semipairs.pack import pack
from tests.hub_server import LoopbackHub

TOKEN = "hf_loopbackSECRET0123456789"


@pytest.fixture()
def hub(tmp_path: Path):
    with LoopbackHub() as h:
        h.env = {**os.environ, "HF_ENDPOINT": h.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1",
                 "COLUMNS": "250", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
        h.env.pop("HF_HUB_OFFLINE", None)
        yield h


def cli(hub, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semipairs.cli", *args], capture_output=True, text=True,
                          env=env or hub.env, timeout=300)


def script(hub, code: str, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=env or hub.env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def digits_version(tmp_path: Path, name: str, version: str, step: int = 2, n: int = 120) -> Path:
    pairs = tmp_path / f"{name}-{version}-{step}.csv"
    pairs.write_text("anchor_key,positive_key\n" + "".join(f"{i:04d},{i + 1:04d}\n" for i in range(0, n, step)))
    return pack("digits", pairs, tmp_path / f"store-{step}", name, version, shard_size=20, progress=False)


@pytest.mark.slow
def test_push_pull_load_and_datasets(hub, tmp_path: Path) -> None:
    v1 = digits_version(tmp_path, "dig", "1.0.0")
    r = cli(hub, "push", str(v1), "me/dig", "--json")
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    assert pushed["uploaded"] and pushed["tag"] == "v1.0.0"
    repo = hub.state.repos[("dataset", "me/dig")]
    assert repo.tags["v1.0.0"] == pushed["commit"] == repo.branches["main"]
    assert "POST /api/validate-yaml" in hub.state.requests  # the card's metadata went through the Hub's check

    again = json.loads(cli(hub, "push", str(v1), "me/dig", "--json").stdout)
    assert not again["uploaded"] and again["commit"] == pushed["commit"] and len(repo.commits) == 2

    out = script(hub, """
        import json, semipairs, datasets
        ds = semipairs.load("hf://me/dig@v1.0.0")
        hf = datasets.load_dataset("me/dig", revision="v1.0.0", split="train")
        row = hf[0]
        print(json.dumps({"hash": ds.manifest.content_hash, "rows": len(hf), "size": list(row["anchor.png"].size),
                          "anchor": row["json"]["anchor_key"], "path": str(ds.path)}))
    """)
    local = json.loads(cli(hub, "info", str(v1), "--json").stdout)
    assert out["hash"] == local["content_hash"] and out["rows"] == 60 and out["size"] == [8, 8]
    assert out["anchor"] == "0000" and out["path"].startswith(hub.env["HF_HOME"])

    # A second pull with HF_HUB_OFFLINE=1 is served by the cache alone: no request reaches the Hub.
    before = len(hub.state.requests)
    r = cli(hub, "pull", "me/dig@v1.0.0", "--json", env={**hub.env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["content_hash"] == out["hash"] and len(hub.state.requests) == before

    # A new version moves main, drops the old version's extra shards, and v1.0.0 still loads as it was.
    v2 = digits_version(tmp_path, "dig", "1.1.0", step=4)
    assert cli(hub, "push", str(v2), "me/dig").returncode == 0
    main_files = repo.commits[repo.branches["main"]]
    old_files = repo.commits[repo.tags["v1.0.0"]]
    assert sum(p.startswith("data/") for p in main_files) == 2 and sum(p.startswith("data/") for p in old_files) == 3
    both = script(hub, """
        import json, semipairs
        print(json.dumps([semipairs.load(u).manifest.version for u in ("hf://me/dig", "hf://me/dig@v1.0.0", "hf://me/dig@v1.1.0")]))
    """)
    assert both == ["1.1.0", "1.0.0", "1.1.0"]


@pytest.mark.slow
def test_repush_with_other_content_is_refused(hub, tmp_path: Path) -> None:
    assert cli(hub, "push", str(digits_version(tmp_path, "dig", "1.0.0")), "me/dig").returncode == 0
    r = cli(hub, "push", str(digits_version(tmp_path, "dig", "1.0.0", step=3)), "me/dig")
    assert r.returncode == 2 and "version 1.0.0 is already on the Hub" in r.stderr and "new version" in r.stderr
    r = cli(hub, "push", str(digits_version(tmp_path, "other", "1.0.0", step=5)), "me/dig")
    assert r.returncode == 2 and "me/dig holds the pair dataset 'dig', not 'other': one repo per dataset" in r.stderr
    assert len(hub.state.repos[("dataset", "me/dig")].commits) == 2  # nothing was uploaded


@pytest.mark.slow
def test_hub_failures_are_clear_and_nothing_partial_is_kept(hub, tmp_path: Path) -> None:
    assert cli(hub, "push", str(digits_version(tmp_path, "dig", "1.0.0")), "me/dig").returncode == 0
    r = cli(hub, "pull", "me/nothing-here")
    assert r.returncode == 2 and "dataset repo me/nothing-here not found" in r.stderr
    r = cli(hub, "pull", "me/dig@v7.0.0")
    assert r.returncode == 2 and "revision 'v7.0.0' not found" in r.stderr

    hub.state.truncate.add("data/pairs-000001.tar")  # the connection drops half way through one shard
    r = cli(hub, "pull", "me/dig@v1.0.0")
    assert r.returncode == 2 and "download failed part way" in r.stderr
    offline = cli(hub, "pull", "me/dig@v1.0.0", env={**hub.env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2  # the half download is not a dataset, even offline
    hub.state.truncate.clear()
    assert cli(hub, "pull", "me/dig@v1.0.0").returncode == 0  # running again completes it

    script(hub, """
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("me/plain", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"a,b\\n1,2\\n", path_in_repo="data.csv", repo_id="me/plain", repo_type="dataset")
        print("{}")
    """)
    r = cli(hub, "pull", "me/plain")
    assert r.returncode == 2 and "is not a semipairs dataset" in r.stderr


def killed_in_flight(hub, *args: str, until=lambda: True) -> None:
    """Run ``semipairs ARGS`` until the loopback Hub holds one of its requests (and ``until()`` is true), then
    SIGKILL it there."""
    hub.state.stalled.clear()
    hub.state.release.clear()
    proc = subprocess.Popen([sys.executable, "-m", "semipairs.cli", *args], env=hub.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.state.stalled.wait(120), f"{args[0]} never reached the held request"
        end = time.monotonic() + 60
        while not until():
            assert proc.poll() is None and time.monotonic() < end, f"{args[0]}: the moment to kill never came"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        hub.state.release.set()


@pytest.mark.slow
def test_a_pull_killed_mid_download_leaves_nothing_loadable_and_runs_again(hub, tmp_path: Path) -> None:
    """SIGKILL while a shard is half sent (huggingface_hub's .incomplete file open in the cache): nothing
    loads from the cache, even offline, and the same pull run again completes and verifies."""
    v1 = digits_version(tmp_path, "dig", "1.0.0")
    assert cli(hub, "push", str(v1), "me/dig").returncode == 0
    hub.state.stall.add("data/pairs-000001.tar")
    cache = Path(hub.env["HF_HOME"])
    # kill once the shard's download has begun (huggingface_hub's partial file exists, its bytes in flight)
    killed_in_flight(hub, "pull", "me/dig@v1.0.0", until=lambda: list(cache.rglob("*.incomplete")))
    offline = cli(hub, "pull", "me/dig@v1.0.0", env={**hub.env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "Traceback" not in offline.stderr  # a half download is not a dataset
    hub.state.stall.clear()
    r = cli(hub, "pull", "me/dig@v1.0.0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["content_hash"] == json.loads(cli(hub, "info", str(v1), "--json").stdout)["content_hash"]
    # huggingface_hub names each writer's partial file apart (BLOB.RANDOM.incomplete) and never reads another's:
    # the killed one's stays as litter of its cache, ignored; the completed snapshot now loads offline too.
    assert cli(hub, "pull", "me/dig@v1.0.0", env={**hub.env, "HF_HUB_OFFLINE": "1"}).returncode == 0


@pytest.mark.slow
def test_a_push_killed_before_its_commit_or_its_tag_shows_no_version_and_runs_again(hub, tmp_path: Path) -> None:
    """SIGKILL while the commit request is in flight, then while the tag request is: the Hub never shows a
    partial version under the version's tag, and the same push run again finishes the job."""
    v1 = digits_version(tmp_path, "dig", "1.0.0")
    repo_key = ("dataset", "me/dig")
    hub.state.hold = {"commit_post"}
    killed_in_flight(hub, "push", str(v1), "me/dig")
    repo = hub.state.repos[repo_key]
    assert len(repo.commits) == 1 and not repo.tags  # only the empty initial commit
    r = cli(hub, "pull", "me/dig@v1.0.0")
    assert r.returncode == 2 and "revision 'v1.0.0' not found" in r.stderr and "Traceback" not in r.stderr

    hub.state.hold = {"tag"}  # now the files land in one commit and the kill comes before the tag
    killed_in_flight(hub, "push", str(v1), "me/dig")
    assert len(repo.commits) == 2 and not repo.tags
    assert cli(hub, "pull", "me/dig@v1.0.0").returncode == 2
    hub.state.hold = set()
    r = cli(hub, "push", str(v1), "me/dig", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert not again["uploaded"] and again["tag"] == "v1.0.0"  # the commit was whole: only the tag was missing
    assert repo.tags["v1.0.0"] == repo.branches["main"] == again["commit"] and len(repo.commits) == 2
    r = cli(hub, "pull", "me/dig@v1.0.0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["content_hash"] == again["content_hash"]


@pytest.mark.slow
def test_tokens_are_sent_never_shown_and_private_repos_need_them(hub, tmp_path: Path) -> None:
    hub.state.token = TOKEN
    version = digits_version(tmp_path, "dig", "1.0.0")
    wrong = {**hub.env, "HF_TOKEN": "hf_wrongSECRETwrongSECRET"}
    r = cli(hub, "push", str(version), "me/secret", "--private", env=wrong)
    assert r.returncode == 2 and "HTTP 401" in r.stderr and "check your token" in r.stderr
    assert "SECRET" not in r.stdout + r.stderr

    r = cli(hub, "push", str(version), "me/secret", "--private")
    assert r.returncode == 0 and hub.state.repos[("dataset", "me/secret")].private
    assert f"Bearer {TOKEN}" in hub.state.auth_headers
    r2 = cli(hub, "pull", "me/secret")
    assert r2.returncode == 0
    anonymous = {k: v for k, v in hub.env.items() if k != "HF_TOKEN"}
    anonymous["HF_HOME"] = str(tmp_path / "other-home")
    r3 = cli(hub, "pull", "me/secret", env=anonymous)
    assert r3.returncode == 2 and "not found or not accessible" in r3.stderr
    for run in (r, r2, r3):
        assert TOKEN not in run.stdout + run.stderr
    for root in (tmp_path / "hf-home", tmp_path / "store-2"):
        for f in root.rglob("*"):
            assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f


@pytest.mark.slow
def test_hf_image_source_feeds_curation(hub, tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(240):
        target = tmp_path / "imgs" / "train" / str(d.target[i]) / f"{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 15).astype("uint8")).save(target)
    script(hub, f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("me/digit-images", repo_type="dataset")
        api.upload_folder(folder_path={str(tmp_path / "imgs")!r}, repo_id="me/digit-images", repo_type="dataset")
        print("{{}}")
    """)
    src = script(hub, """
        import json
        from semipairs.sources import open_source
        s = open_source("hf:me/digit-images@main:train")
        item = s.read(5)
        print(json.dumps({"n": len(s), "classes": s.classes, "key": item.key, "ext": item.ext,
                          "labels": s.labels()[:3], "label5": item.label}))
    """)
    assert src["n"] == 240 and src["classes"] == [str(i) for i in range(10)] and src["key"] == "train/000005"
    assert src["ext"] == "png" and src["labels"] == [0, 0, 0] and src["label5"] == 0

    r = cli(hub, "curate", "--source", "hf:me/digit-images", "--encoder", "pixels", "--store", str(tmp_path / "store"),
            "--name", "hubdigits", "--version", "1.0.0", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "store" / "hubdigits" / "1.0.0" / "semipairs.json").read_text())
    assert m["source"]["uri"] == "hf:me/digit-images" and m["source"]["num_images"] == 240
    assert m["stats"]["num_pairs"] > 100 and m["stats"]["label_precision"] > 0.9

    bad = cli(hub, "curate", "--source", "hf:me/digit-images#image=photo", "--encoder", "pixels",
              "--store", str(tmp_path / "store"), "--name", "x", "--version", "1.0.0")
    assert bad.returncode != 0 and "no image column named 'photo'" in bad.stderr
