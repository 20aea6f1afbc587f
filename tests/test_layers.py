"""The layers of docs/architecture.md as a checked contract: an AST walk over every import statement
(module level and inside functions) fails on an edge that points the wrong way."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# curation may reach training only from the tour, which drives training on purpose. The ckpt: encoder reads
# checkpoints through the contract both share (semipairs/checkpoint.py, backbones.py, views.py).
CURATION_TO_TRAINING = {"curation/quickstart.py"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def back_edges() -> list[str]:
    bad = []
    for package, forbidden in [("semipairs", {"curation", "training"}), ("training", {"curation"}),
                               ("curation", {"training"})]:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            hits = imports(path) & forbidden
            if package == "curation" and rel in CURATION_TO_TRAINING:
                hits -= {"training"}
            bad += [f"{rel} imports {h}" for h in sorted(hits)]
    return bad


def test_imports_point_down_the_layers():
    assert back_edges() == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from training.trainer import train\n    import curation.mine\n")
    assert imports(f) == {"training", "curation"}


def test_a_command_whose_package_fails_to_import_says_so(tmp_path):
    """A broken optional package (here: training shadowed by one that raises ImportError) keeps its commands
    in --help and each ends in one error line naming the import, instead of vanishing."""
    import os
    import subprocess
    import sys

    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("raise ImportError('no module named torch_missing')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    cli = [sys.executable, "-m", "semipairs.cli"]
    helped = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert helped.returncode == 0 and "train" in helped.stdout and "unavailable" in helped.stdout
    r = subprocess.run([*cli, "train", "--data", "digits"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: semipairs train is unavailable: importing training.cli failed (ImportError: no module named " \
           "torch_missing)" in r.stderr
    ok = subprocess.run([*cli, "curate", "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0 and "--encoder" in ok.stdout  # the other package is untouched


def test_a_missing_extra_names_what_to_install():
    import pytest

    from semipairs.errors import SemipairsError
    from semipairs.extras import MissingExtraError, require_extra

    with pytest.raises(MissingExtraError, match=r"no_such_pkg_xyz is not installed .*\[graph\]") as info:
        require_extra("no_such_pkg_xyz", "graph")
    assert isinstance(info.value, SemipairsError)  # the CLI ends it in one error line
    assert require_extra("json", "graph").dumps([1]) == "[1]"


def test_old_import_paths_stay_for_one_release() -> None:
    """Renamed modules (names that say what they hold) keep their old paths as thin re-exports."""
    import semipairs.arrays
    import semipairs.sources.hf_datasets
    import semipairs.sources.hub
    import semipairs.vectors
    import training.batches
    import training.data
    import training.decoded_batches
    import training.streamed

    assert semipairs.vectors.Parts is semipairs.arrays.Parts
    assert semipairs.sources.hub.HubImageSource is semipairs.sources.hf_datasets.HubImageSource
    assert training.data.SePPViews is training.streamed.SePPViews
    assert training.batches.plan_epoch is training.decoded_batches.plan_epoch
    import semipairs.checkpoint
    import training.backbones
    import training.checkpoint

    assert training.checkpoint.load_backbone is semipairs.checkpoint.load_backbone
    assert training.backbones.build_backbone is semipairs.checkpoint.build_backbone
