"""One output, one writer: an advisory lock file beside the output, holding the writer's pid and host.

Two jobs pointed at one run directory (or one dataset version) would interleave checkpoints or files; the
second is refused with a message naming the holder. A lock whose holder is gone (same host, pid no longer
running: a job killed with SIGKILL leaves its lock behind) is stale and taken over, so a killed command can
simply be run again. Locks of another host are never judged stale: its processes cannot be seen from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from semipairs.errors import StoreError


def lock_path(target: str | Path) -> Path:
    """``DIR/.NAME.lock`` beside ``DIR/NAME``: the target itself need not exist yet."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written right now, or unreadable: held, holder unknown


@contextlib.contextmanager
def exclusive(target: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of ``target`` for the block (``what`` names the work in the refusal message). Re-entrant
    within one process: a block nested in one that holds the lock (curate around its publish) just runs."""
    path = lock_path(target)
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # removed again if left empty
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create ({exc.strerror or exc})") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue  # released between our two looks
            if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                yield path  # held by an outer block of this process, which releases it
                return
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its writer is gone
                continue
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
            raise StoreError(f"{target}: {what} is already running ({who}); wait for it to finish, or delete {path} "
                             "if that process is gone") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the lock file ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise StoreError(f"{path}: could not take the lock (it keeps changing hands)")
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                path.unlink()
        for d in made:  # innermost first: a failed first run into a new store leaves no empty folders
            try:
                d.rmdir()
            except OSError:
                break
