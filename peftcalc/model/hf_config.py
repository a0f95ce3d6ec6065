"""A local Hugging Face config.json -> ModelSpec, offline: a hand-written family builder when one exists
(model/families/, no transformers needed), else the inventory transformers builds (model/derived.py: shipped,
cached, or derived with the measure extra)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from peftcalc.errors import ConfigError
from peftcalc.model.bounds import check_config, check_params
from peftcalc.model.derived import derived_spec
from peftcalc.model.families import FAMILIES
from peftcalc.model.spec import ModelSpec, Scope


def supported_families() -> list[str]:
    return sorted(FAMILIES)


def spec_from_config(cfg: Mapping[str, Any], name: str, source: str, scope: Scope = "text",
                     shipped: str | None = None, bounded: bool = True) -> ModelSpec:
    """Build the ModelSpec of a config dict (the contents of a config.json). `scope` matters for multimodal
    checkpoints only (text: the language model and its head; full: every tower); `shipped` names the catalogue
    entry whose derived inventory ships with the package. `bounded`: refuse sizes no real model has (model/bounds.py);
    off only for shapes peftcalc makes itself (model/infer.py checks the user's numbers)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    family = cfg.get("model_type")
    if not family or not isinstance(family, str):
        raise ConfigError(f"{source}: no 'model_type' key; is this a Hugging Face config.json?")
    if bounded:
        check_config(cfg, source)
    spec = FAMILIES[family](cfg, name, source) if family in FAMILIES else derived_spec(cfg, name, source, scope, shipped)
    if bounded:
        check_params(spec.total_params, f"{source}: a model of")
    return spec


def load_config(path: str | os.PathLike[str], scope: Scope = "text") -> ModelSpec:
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
    return spec_from_config(cfg, name, str(p), scope)
