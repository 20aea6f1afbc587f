"""Regenerate docs/cli.md from the commands' own --help: `python docs/make_cli.py > docs/cli.md`."""

import os
import subprocess

COMMANDS = ["pack", "info", "verify", "push", "pull", "review", "curate", "audit", "train", "eval", "refine", "quickstart"]

print("# CLI reference\n\nGenerated from `semipairs COMMAND --help` (regenerate: `python docs/make_cli.py > docs/cli.md`).\n")
for c in COMMANDS:
    env = dict(os.environ, COLUMNS="110")
    out = subprocess.run(["semipairs", c, "--help"], capture_output=True, text=True, env=env, check=True).stdout
    print(f"## semipairs {c}\n\n```\n{out.rstrip()}\n```\n")
