"""Faults injected for real: a second writer into one run directory, a job killed with SIGKILL mid-run and
run again (stale lock taken over, training resumed to the same end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semipairs.dataset import load
from semipairs.errors import StoreError
from semipairs.lock import exclusive, lock_path


def _train(out: Path, epochs: int = 3, data: str = "digits", batch_size: int = 512) -> list[str]:
    return [sys.executable, "-m", "semipairs.cli", "train", "--method", "moco", "--data", data, "--image-size", "8",
            "--batch-size", str(batch_size), "--epochs", str(epochs), "--precision", "fp32", "--num-workers", "0",
            "--out", str(out)]


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def test_a_second_writer_is_refused_and_the_holder_keeps_its_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("the holder's")
    with exclusive(out, "training into this run directory"):  # this test process is the first writer
        second = subprocess.run(_train(out), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"training into this run directory is already running (pid {os.getpid()} on" in second.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and not lock_path(out).exists()


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_keeps_the_last_good_one_and_resumes(cifar_folder: Path,
                                                                                     tmp_path: Path) -> None:
    """SIGKILL in the middle of the second checkpoint write (epoch 2's, not yet renamed over epoch 1's): the
    epoch-1 checkpoint stays whole, the lock is left stale, and the same command run again takes the lock
    over, cleans the half-written temp and ends where an uninterrupted run ends, epoch 1's metrics kept."""
    from semipairs.checkpoint import load_checkpoint

    out = tmp_path / "run"
    cmd = _train(out, data=f"imagefolder:{cifar_folder}", batch_size=100)  # 3 steps an epoch
    _killed_at("checkpoint.write@2", cmd)
    assert lock_path(out).exists() and list(out.glob(".checkpoint.pt.*.tmp"))  # what the kill left
    state = load_checkpoint(out / "checkpoint.pt")
    done = json.loads(state["metrics_epochs"])  # metrics.json may lag by a write
    assert state["epoch"] == 1 and [e["epoch"] for e in done] == [1]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[:1] == done  # resumed, the finished epoch kept
    assert not lock_path(out).exists() and not list(out.glob(".checkpoint.pt.*.tmp"))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3


def test_a_lock_is_released_on_errors_and_never_judged_stale_across_hosts(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), exclusive(target, "work"):
        raise RuntimeError("boom")
    assert not lock_path(target).exists()
    lock_path(target).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(StoreError, match=r"work is already running \(pid 1 on elsewhere since then\)"), \
            exclusive(target, "work"):
        pass
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(target).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename, "since": "x"}))
    with exclusive(target, "work") as path:  # same host, holder gone: stale, taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()


def _file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored)."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _one_error(r: subprocess.CompletedProcess) -> str:
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def test_a_failed_write_names_the_file_and_publishes_nothing(cifar_folder: Path, tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG, as on a full disk) on a real
    `semipairs pack`: the shard being written is named, no temp directory or version is left."""
    from semipairs.sources import open_source
    from tests.conftest import ring_pairs

    csv = ring_pairs(open_source(f"imagefolder:{cifar_folder}").keys(), tmp_path / "p.csv")
    store = tmp_path / "store"
    r = subprocess.run(_cli("pack", "--source", f"imagefolder:{cifar_folder}", "--pairs", str(csv), "--store", str(store),
                            "--name", "ring", "--version", "1.0.0"),
                       capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(150_000))
    assert f"{store / 'ring' / '1.0.0' / 'data' / 'pairs-000000.tar'}: write failed (File too large)" in _one_error(r)
    assert [p.name for p in (store / "ring").iterdir()] == []  # no temp directory, no version


@pytest.mark.slow
def test_failed_writes_of_a_checkpoint_a_cache_and_an_audit_name_their_file(tmp_path: Path) -> None:
    """Full-disk writes (RLIMIT_FSIZE) outside publishing: torch.save's own error ("unexpected pos") used to
    hide the cause and the file; a sparse decoded cache would die of SIGBUS later; an audit named nothing."""
    import torch

    out = tmp_path / "run"
    env = {**os.environ, "SEMIPAIRS_CACHE": str(tmp_path / "cache")}
    first = subprocess.run(_train(out, epochs=1), capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    r = subprocess.run(_train(out, epochs=2), capture_output=True, text=True, timeout=300, env=env,
                       preexec_fn=_file_size_limit(2_000_000))  # the decoded cache exists; the checkpoint is ~45 MB
    assert f"{out / 'checkpoint.pt'}: write failed (File too large)" in _one_error(r)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the last good one
    assert not list(out.glob(".*.tmp"))

    r = subprocess.run(_train(tmp_path / "run2", epochs=1), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SEMIPAIRS_CACHE": str(tmp_path / "cache2")},
                       preexec_fn=_file_size_limit(100_000))  # 1,797 digits x 8 x 8 x 3 B = 345 kB
    line = _one_error(r)
    assert str(tmp_path / "cache2" / "decoded") in line and "cannot write the decoded-image cache (File too large)" in line
    assert "--decode-budget-gb 0" in line and not list((tmp_path / "cache2" / "decoded").iterdir())

    pairs = tmp_path / "p.csv"
    pairs.write_text("anchor_key,positive_key\n" + "".join(f"{i:04d},{i + 1:04d}\n" for i in range(0, 200, 2)))
    assert subprocess.run(_cli("pack", "--source", "digits", "--pairs", str(pairs), "--store", str(tmp_path / "s"),
                               "--name", "d", "--version", "1.0.0"), capture_output=True, timeout=300).returncode == 0
    r = subprocess.run(_cli("audit", str(tmp_path / "s" / "d" / "1.0.0"), "--out", str(tmp_path / "audit")),
                       capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(5_000))
    line = _one_error(r)
    assert str(tmp_path / "audit") in line and "write failed (File too large)" in line
    assert not list((tmp_path / "audit").glob(".*.tmp"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "semipairs.cli", *args]


def _killed_at(point: str, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` until it SIGKILLs itself at the named point (semipairs.faults)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "SEMIPAIRS_KILL_AT": point})
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-2000:])
    return r


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["publish.shards", "publish.manifest", "publish.rename"])
def test_pack_killed_at_any_moment_shows_no_version_and_runs_again(cifar_folder: Path, tmp_path: Path, moment: str) -> None:
    """SIGKILL half-way through the shards, after the manifest, just before the rename: no reader sees a
    version; the same command run again cleans the killed one's temp dir and lock and publishes."""
    from semipairs.dataset import list_versions
    from semipairs.sources import open_source
    from tests.conftest import ring_pairs

    src = f"imagefolder:{cifar_folder}"
    csv = ring_pairs(open_source(src).keys(), tmp_path / "p.csv")
    store = tmp_path / "store"
    cmd = _cli("pack", "--source", src, "--pairs", str(csv), "--store", str(store), "--name", "ring", "--version", "1.0.0",
               "--shard-size", "50")
    _killed_at(moment, cmd)
    left = sorted(p.name for p in (store / "ring").iterdir())
    assert left[0] == ".1.0.0.lock" and left[1].startswith(".tmp-1.0.0-") and len(left) == 2  # what the kill left
    assert list_versions(store / "ring") == []
    with pytest.raises(StoreError, match="no published version here"):
        load(store / "ring")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (store / "ring").iterdir()) == ["1.0.0"]  # temp and stale lock gone
    assert load(store / "ring").verify().ok


@pytest.mark.slow
def test_a_second_publisher_of_one_version_is_refused(cifar_folder: Path, tmp_path: Path) -> None:
    from semipairs.publish import version_dir
    from semipairs.sources import open_source
    from tests.conftest import ring_pairs

    src = f"imagefolder:{cifar_folder}"
    csv = ring_pairs(open_source(src).keys(), tmp_path / "p.csv")
    store = tmp_path / "store"
    with exclusive(version_dir(store, "ring", "1.0.0"), "publishing ring 1.0.0"):
        for cmd in (_cli("pack", "--source", src, "--pairs", str(csv), "--store", str(store), "--name", "ring"),
                    _cli("curate", "--source", src, "--store", str(store), "--name", "ring", "--version", "1.0.0",
                         "--num-workers", "0")):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert r.returncode == 2 and f"publishing ring 1.0.0 is already running (pid {os.getpid()}" in r.stderr, r.stderr
    assert not (store / "ring" / "1.0.0").exists()


@pytest.mark.slow
def test_curate_killed_after_an_embedding_chunk_resumes_from_the_cache(cifar_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (tmp_path / "run.yaml").write_text("chunk_size: 100\n")  # 300 images: three chunks
    cmd = _cli("curate", "--source", f"imagefolder:{cifar_folder}", "--store", str(store), "--name", "c",
               "--version", "1.0.0", "--config", str(tmp_path / "run.yaml"), "--num-workers", "0", "--k", "5")
    _killed_at("embed.chunk", cmd)
    chunks = list((store / ".cache").rglob("chunk-*.npz"))
    assert len(chunks) == 1  # the first chunk is on disk, the kill came before the second
    before = chunks[0].stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert chunks[0].stat().st_mtime_ns == before  # reused, not recomputed
    assert len(list((store / ".cache").rglob("chunk-*.npz"))) == 3
    assert load(store / "c" / "1.0.0").verify().ok


@pytest.mark.slow
def test_refine_killed_while_writing_keeps_no_report_and_runs_again(cifar_folder: Path, tmp_path: Path) -> None:
    """SIGKILL while the GNN checkpoint is written (the embeddings already replaced, the report not yet):
    report.json, written last and removed before any output changes, is absent, so the directory reads as
    unfinished; the same refinement run again cleans the killed writer's temp and lock and finishes."""
    from training.configs import RefineConfig, TrainConfig
    from training.refine import refine
    from training.trainer import train

    run, out = tmp_path / "run", tmp_path / "refined"
    data = f"imagefolder:{cifar_folder}"
    train(TrainConfig(method="moco", data=data, image_size=8, batch_size=100, max_steps=2, queue_size=200,
                      precision="fp32", num_workers=0, out=run), progress=False)
    cfg = RefineConfig(checkpoint=run / "checkpoint.pt", data=data, k=5, epochs=1, hidden=16, batch_size=256,
                       num_workers=0, precision="fp32", out=out)
    refine(cfg, progress=False, log=lambda _: None)
    assert (out / "report.json").exists()
    _killed_at("checkpoint.write", _cli("refine", "--config", str(_yaml(tmp_path / "r.yaml", cfg))))
    assert not (out / "report.json").exists() and list(out.glob(".gnn.pt.*.tmp")) and lock_path(out).exists()
    report = refine(cfg, progress=False, log=lambda _: None)
    assert report["train_nodes"] == 300 and json.loads((out / "report.json").read_text())["train_nodes"] == 300
    assert not list(out.glob(".*.tmp")) and not lock_path(out).exists()


def _yaml(path: Path, cfg) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    return path
