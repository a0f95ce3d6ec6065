"""A local Hugging Face config.json -> ModelSpec, offline, without importing transformers."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from peftcalc.errors import ConfigError
from peftcalc.model.families import FAMILIES
from peftcalc.model.spec import ModelSpec


def supported_families() -> list[str]:
    return sorted(FAMILIES)


def spec_from_config(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    """Build the ModelSpec of a config dict (the contents of a config.json)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    family = cfg.get("model_type")
    if not family:
        raise ConfigError(f"{source}: no 'model_type' key; is this a Hugging Face config.json?")
    if family not in FAMILIES:
        raise ConfigError(
            f"{source}: model_type {family!r} is not supported; supported: {', '.join(supported_families())}"
        )
    return FAMILIES[family](cfg, name, source)


def load_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a config.json (or a folder holding one) into a ModelSpec named after its folder."""
    from pathlib import Path  # (only here: estimates of catalogue models and --params do not need it)

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
    return spec_from_config(cfg, name, str(p))
