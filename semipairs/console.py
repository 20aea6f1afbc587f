"""The CLI's terminal: one stdout console, one stderr console, and the one way an expected failure ends.

Every command is wrapped by ``guarded``: an expected failure (a ``SemipairsError``, a config that fails
validation, a bad value, a file that cannot be read or written) prints exactly one line,
``error: <message>``, and exits 2. User text is never read as Rich markup, so a message holding
``[/...]`` prints as it is. ``SEMIPAIRS_DEBUG=1`` adds the traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from semipairs.config import validation_message
from semipairs.errors import SemipairsError

err = Console(stderr=True)
out = Console()

EXPECTED = (SemipairsError, ValidationError, OSError)  # a plain ValueError is a bug: it keeps its traceback


def message(exc: BaseException) -> str:
    """One line naming what is wrong."""
    if isinstance(exc, ValidationError):
        text = validation_message(exc)
    elif isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in str(exc):
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def fail(exc: BaseException, code: int = 2) -> NoReturn:
    """Print ``error: ...`` once (plus the traceback under SEMIPAIRS_DEBUG=1) and exit with ``code``."""
    if os.environ.get("SEMIPAIRS_DEBUG"):
        traceback.print_exception(exc)
    err.print(Text.assemble(("error: ", "bold red"), message(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(text: str) -> None:
    err.print(Text(f"note: {text}"), highlight=False, soft_wrap=True)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose expected failures end in ``fail`` (the signature stays, for typer)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED as exc:
            fail(exc)

    return run


class GuardedTyper(typer.Typer):
    """A Typer app whose every command, from any package, is ``guarded``."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(guarded(fn))
