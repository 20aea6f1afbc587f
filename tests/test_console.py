"""What reaches the user when a command fails: an error semipairs raises on purpose is one line; anything
else (a bug, even one that raises a ValueError) keeps its traceback, so it can be reported."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from semipairs.console import GuardedTyper
from semipairs.errors import InvalidValueError, SemipairsError


def _app(exc: BaseException) -> typer.Typer:
    app = GuardedTyper()

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands, so typer keeps the command name
        pass

    return app


@pytest.mark.parametrize("exc", [InvalidValueError("--k: must be >= 1"), SemipairsError("--k: must be >= 1"),
                                 FileNotFoundError(2, "No such file or directory", "/data/x.npy")])
def test_an_expected_failure_is_one_error_line_and_exit_2(exc: BaseException) -> None:
    res = CliRunner().invoke(_app(exc), ["boom"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    assert ("/data/x.npy" in lines[0]) if isinstance(exc, OSError) else ("--k: must be >= 1" in lines[0])


def test_a_plain_value_error_is_a_bug_and_is_not_swallowed() -> None:
    res = CliRunner().invoke(_app(ValueError("shapes (3,) and (4,) not aligned")), ["boom"])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)
    assert "error: " not in res.output



def test_a_result_line_naming_a_long_path_stays_one_line_on_a_narrow_terminal(tmp_path) -> None:
    """Paths are copied from the terminal: rich must not break them where the terminal is narrow."""
    from semipairs.cli import app

    pairs = tmp_path / "p.csv"
    pairs.write_text("anchor_key,positive_key\n0000,0001\n0002,0003\n")
    store = tmp_path / ("a-rather-long-directory-name-" * 3) / "store"
    runner = CliRunner()
    for args in (["pack", "--source", "digits", "--pairs", str(pairs), "--store", str(store), "--name", "d",
                  "--version", "1.0.0"], ["verify", str(store / "d" / "1.0.0")]):
        res = runner.invoke(app, args, env={"COLUMNS": "60"})
        assert res.exit_code == 0, res.output
        line = [ln for ln in res.output.splitlines() if "published d 1.0.0 at" in ln or ln.startswith("ok:")]
        assert len(line) == 1 and str(store / "d" / "1.0.0") in line[0], res.output
