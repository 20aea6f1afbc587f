"""Named moments where a fault test kills this process for real: ``SEMIPAIRS_KILL_AT=NAME`` sends SIGKILL
to ourselves when the run reaches ``point(NAME)``, ``NAME@N`` on its N-th time (the second checkpoint
write, after a good first one).

A kill "after the manifest is written but before the version is renamed" lasts milliseconds; polling for
it from outside is a race that one machine wins and another loses. A named point reaches each moment on
every machine. Unset (every real run), a point is one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SEMIPAIRS_KILL_AT"
POINTS = ("publish.shards", "publish.manifest", "publish.rename", "embed.chunk", "checkpoint.write")


_seen: dict[str, int] = {}  # times each point was reached in this process (only counted while ENV is set)


def point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    at, _, nth = wanted.partition("@")
    if at != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
