"""Optional packages (the ``models`` and ``graph`` extras): one import helper whose failure is an expected
error naming the extra to install, not a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from semipairs.errors import SemipairsError


class MissingExtraError(SemipairsError):
    """An optional package a command needs is not installed."""


def require_extra(module: str, extra: str) -> ModuleType:
    """``import module``, or a MissingExtraError saying ``pip install 'semipairs[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module} is not installed ({exc}); it comes with `python3 -m pip install -e "
                                f"\".[{extra}]\"` (or `pip install 'semipairs[{extra}]'`)") from None
