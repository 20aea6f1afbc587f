"""Named moments where a fault test kills this process for real: ``SEMIPAIRS_KILL_AT=NAME`` sends SIGKILL
to ourselves when the run reaches ``point(NAME)``.

A kill "after the manifest is written but before the version is renamed" lasts milliseconds; polling for
it from outside is a race that one machine wins and another loses. A named point reaches each moment on
every machine. Unset (every real run), a point is one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SEMIPAIRS_KILL_AT"
POINTS = ("publish.shards", "publish.manifest", "publish.rename", "embed.chunk", "checkpoint.write")


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
