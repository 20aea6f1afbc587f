"""One config path: each job command's options, help text and shown defaults come from its pydantic model
(``semipairs.config.option``), every job command takes ``--config``, and a bad value gets one message format
whether it came from a flag or from the YAML file. The commands that act on one dataset path (info, verify,
audit, push, pull, review) take it as an argument and a few flags: they have no config file."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
import yaml
from pydantic import ValidationError
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

from curation.config import CurateConfig, MiningConfig, QuickstartConfig
from semipairs.cli import app
from semipairs.config import load_config, validation_message
from semipairs.pack import PackConfig
from training.configs import EvalConfig, RefineConfig, TrainConfig

MODELS = {"train": [TrainConfig], "eval": [EvalConfig], "refine": [RefineConfig], "curate": [CurateConfig, MiningConfig],
          "pack": [PackConfig], "quickstart": [QuickstartConfig]}
OWN_SYNTAX = {("refine", "fanouts")}  # the flag is comma-separated where the key is a list: its help says so


@pytest.mark.parametrize("command", sorted(MODELS))
def test_every_option_is_a_model_field_with_the_models_help_and_default(command: str) -> None:
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    assert "config" in params and "as_json" in params
    for name, p in params.items():
        if name in ("config", "as_json"):
            continue
        field = next((m.model_fields[name] for m in MODELS[command] if name in m.model_fields), None)
        assert field is not None, f"{command} --{name} is not a field of {[m.__name__ for m in MODELS[command]]}"
        assert p.default is None, f"{command} --{name}: a default outside the model"
        if (command, name) not in OWN_SYNTAX:
            assert p.help.startswith(field.description), (command, name)
        shown = field.default not in (None, PydanticUndefined) and not isinstance(field.default, bool)
        if shown and "default" not in (field.description or ""):  # a description may say its default in words
            assert p.help.endswith(f"[default: {field.default}]"), (command, name, p.help)


def test_yaml_keys_then_flags_then_the_models_defaults(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"checkpoint": "a.pt", "data": "digits", "out": "o", "k": 7,
                                                     "conv": "gcn"}))
    cfg = load_config(RefineConfig, tmp_path / "r.yaml", {"k": 5, "epochs": None})
    assert (cfg.k, cfg.conv, cfg.epochs, cfg.fanouts) == (5, "gcn", 10, None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"source": "digits", "store": "s", "name": "n", "mutual": True,
                                                     "mining": {"k": 3}}))
    cur = CurateConfig.from_sources(tmp_path / "c.yaml", {"max_per_anchor": 2, "seed": None})
    assert (cur.mining.k, cur.mining.mutual, cur.mining.max_per_anchor, cur.mining.seed) == (3, True, 2, 0)


def test_one_message_format_for_flags_and_nested_keys() -> None:
    with pytest.raises(ValidationError) as flat:
        load_config(EvalConfig, None, {"checkpoint": "a.pt", "train": "digits", "test": "digits", "k": 0})
    assert validation_message(flat.value) == "--k (config key 'k'): Input should be greater than or equal to 1"
    with pytest.raises(ValidationError) as nested:
        CurateConfig.from_sources(None, {"source": "digits", "store": "s", "name": "n", "k": 0})
    assert validation_message(nested.value) == "--k (config key 'mining.k'): Input should be greater than or equal to 1"


@pytest.mark.parametrize("argv,names", [
    (["eval", "--train", "digits", "--test", "digits"], "--checkpoint (config key 'checkpoint'): Field required"),
    (["refine", "--checkpoint", "a.pt", "--data", "digits", "--out", "o", "--k", "0"], "--k (config key 'k')"),
])
def test_eval_and_refine_validate_before_any_work(argv: list[str], names: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and r.output.startswith("error: ") and names in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_refine_and_eval_read_a_config_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"checkpoint": "nope.pt", "train": "digits", "test": "digits"}))
    r = CliRunner().invoke(app, ["eval", "--config", "e.yaml"])
    assert r.exit_code == 2 and "nope.pt" in r.output  # the YAML's checkpoint was the one opened
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"checkpoint": "gone.pt", "data": "digits", "out": "o", "layers": 3}))
    r = CliRunner().invoke(app, ["refine", "--config", "r.yaml", "--fanouts", "4,3"])
    assert r.exit_code == 2 and "--fanouts (config key 'fanouts')" in r.output and "3 layers" in r.output
