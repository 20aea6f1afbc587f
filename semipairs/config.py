"""One way every command builds its config: a YAML file (optional), then the flags given, then the
pydantic model's validation. Defaults and help text live only in the models: ``option`` makes a typer
option from a model field (its description is the help, its default is shown), and a flag left unset
(None) keeps the YAML's value or the default. A validation error names the flag and the YAML key, in one
format for every command (``validation_message``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from semipairs.errors import SemipairsError

M = TypeVar("M", bound=BaseModel)

# The --precision option of every command that runs a model (train, eval, refine, curate).
PRECISIONS = ("auto", "fp32", "bf16")  # torch-free: the CLI and benches build their choices from it
PRECISION_HELP = ("auto (where the CPU has avx512_bf16/AMX or on CUDA: the faster of fp32 and bf16 autocast, with or "
                  "without channels_last, timed at the run's size, each checked against fp32 on one step; elsewhere "
                  "on the CPU fp32 with or without channels_last, checked and timed the same way), fp32 (plain "
                  "layout, no check), or bf16 (the same check; fp32 with a note when no bf16 option agrees). Known CPU "
                  "kernel faults are avoided by rule: see the README's precision section.")


def read_yaml(path: Path | None) -> dict[str, Any]:
    """The mapping a YAML config holds ({} without a path); a clear error for a missing or bad file."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SemipairsError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(raw, dict):
        raise SemipairsError(f"{path}: a config must be a mapping of keys to values")
    return raw


def load_config(model: type[M], yaml_path: Path | None, flags: dict[str, Any],
                nested: dict[str, type[BaseModel]] | None = None) -> M:
    """``model`` from the YAML file's keys overridden by the flags that were given. ``nested`` names blocks
    (``mining``) whose keys may also sit at the YAML's top level and come as bare flags (``--k``)."""
    raw = read_yaml(yaml_path)
    flags = {k: v for k, v in flags.items() if v is not None}
    for block, sub in (nested or {}).items():
        inner = dict(raw.pop(block, {}) or {})
        for key in sub.model_fields:
            if key in raw:
                inner[key] = raw.pop(key)
            if key in flags:
                inner[key] = flags.pop(key)
        raw[block] = inner
    raw.update(flags)
    return model.model_validate(raw)


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as ``--flag (config key 'a.b'): reason``, one clause per field."""
    parts = []
    for e in exc.errors():
        key = ".".join(str(x) for x in e["loc"])
        where = f"--{str(e['loc'][-1]).replace('_', '-')} (config key '{key}'): " if key else ""
        parts.append(where + e["msg"].removeprefix("Value error, "))
    return "; ".join(parts)


def option(model: type[BaseModel], name: str, *decls: str, **kwargs: Any) -> Any:
    """A typer option for ``model.name``: help = the field's description (or ``help=``, where the flag's syntax
    differs from the key's) plus its default. The option's own default is None, so an unset flag keeps the
    YAML's value or the model's default."""
    field = model.model_fields[name]
    text = kwargs.pop("help", None) or field.description or name.replace("_", " ").capitalize() + "."
    default = field.default
    if field.is_required():
        text = f"{text} [required: a flag or a config key]"
    elif default is not None and default is not PydanticUndefined and "default" not in text:
        pair = next((d.split("/") for d in decls if "/" in d), None)  # --cifar-stem/--imagenet-stem
        shown = (pair[0] if default else pair[1]) if isinstance(default, bool) and pair else default
        shown = str(shown).lower() if isinstance(shown, bool) else shown
        text = f"{text} [default: {shown}]"
    return typer.Option(None, *decls, help=text, show_default=False, **kwargs)


def config_option(keys: str = "") -> Any:
    """The ``--config`` option of every job command (``keys`` adds where a command's nested keys may sit)."""
    return typer.Option(None, help=f"YAML config: keys are the option names with underscores{keys}; flags override them.")


def flags(given: dict[str, Any]) -> dict[str, Any]:
    """A command's option values by config key: its ``locals()`` less ``config`` and ``--json``."""
    return {k: v for k, v in given.items() if k not in ("config", "as_json")}
