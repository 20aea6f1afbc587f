"""The browser the page tests drive: Debian's chromium, installed by the test set-up itself where it is
missing (apt-get, as root), since Playwright cannot download its own browsers offline."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find() -> str | None:
    return next((p for p in map(shutil.which, NAMES) if p), None)


def chromium() -> str:
    """Path of a chromium binary; installs Debian's package when apt-get can; fails under CI=true, else skips."""
    found = _find()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        found = _find()
    if found is None:
        message = "no chromium here and apt-get could not install it (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found
