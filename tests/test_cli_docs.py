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


def examples(epilog: str) -> list[list[str]]:
    """Each ``semipairs CMD ...`` command line of an epilog, as argv (CMD first); prose after it is cut off."""
    import shlex

    found = []
    for m in re.finditer(r"semipairs ([a-z]+)((?: (?:'[^']*'|[^\s'()]+))*)", epilog):
        line = re.split(r"\.(?:\s|$)", m.group(2))[0]  # "--min-score 0.5.  From ..." ends at the sentence's full stop
        found.append([m.group(1), *shlex.split(line)])
    return found


def test_every_commands_help_example_parses_and_validates():
    """The examples users copy from --help: every flag exists, every value has the flag's type, and for the
    commands with a config model the values pass its validation (a renamed flag or choice breaks this)."""
    from curation.config import CurateConfig, QuickstartConfig
    from semipairs.config import load_config
    from semipairs.pack import PackConfig
    from training.configs import EvalConfig, RefineConfig, TrainConfig

    models = {"train": TrainConfig, "eval": EvalConfig, "refine": RefineConfig, "pack": PackConfig,
              "quickstart": QuickstartConfig}
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        lines = examples(command.epilog or "")
        assert lines and lines[0][0] == name, f"{name}: no 'Example: semipairs {name} ...' in its --help"
        for argv in lines:
            ctx = group.commands[argv[0]].make_context(argv[0], argv[1:])
            given = {k: v for k, v in ctx.params.items() if k not in ("config", "as_json") and v is not None}
            if argv[0] == "curate":
                CurateConfig.from_sources(None, given)
            elif argv[0] in models:
                load_config(models[argv[0]], None, given)
