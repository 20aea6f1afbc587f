"""docs/cli.md is generated from --help (`python docs/make_cli.py > docs/cli.md`); this fails when a command or
an option was added, renamed or removed since, so the reference cannot drift silently."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from semipairs.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_md_lists_every_command_and_option():
    blocks = dict(re.findall(r"## semipairs (\S+)\n\n```\n(.*?)\n```", DOC.read_text(), re.S))
    group = typer.main.get_command(app)
    assert sorted(blocks) == sorted(group.commands), "regenerate: python docs/make_cli.py > docs/cli.md"
    for name, command in group.commands.items():
        rows = re.findall(r"^  (--[a-z][a-z0-9-]*)(?: / (--[a-z][a-z0-9-]*))?", blocks[name], re.M)  # the option column
        documented = {o for row in rows for o in row if o}
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        assert options | {"--help"} == documented, (name, sorted(options ^ (documented - {"--help"})))
