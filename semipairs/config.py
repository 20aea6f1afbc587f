"""One way every command builds its config: a YAML file (optional), then the flags given, then the
pydantic model's validation. Defaults live only in the models; a flag left unset (None) keeps the
YAML's value or the default. A validation error names the flag and the YAML key (``console.message``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from semipairs.errors import SemipairsError

M = TypeVar("M", bound=BaseModel)


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


def load_config(model: type[M], yaml_path: Path | None, flags: dict[str, Any]) -> M:
    """``model`` from the YAML file's keys overridden by the flags that were given."""
    raw = read_yaml(yaml_path)
    raw.update({k: v for k, v in flags.items() if v is not None})
    return model.model_validate(raw)
