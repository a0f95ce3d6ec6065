"""Helpers shared by family builders: reading config values the way transformers does."""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import ConfigError


def get(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    """cfg[key], or transformers' default when the key is absent or null."""
    value = cfg.get(key)
    return default if value is None else value


def positive_int(cfg: Mapping[str, Any], key: str, default: Any) -> int:
    value = get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config.json: {key!r} must be a positive integer, got {value!r}")
    return value


def divide(a: int, b: int, what: str) -> int:
    if a % b:
        raise ConfigError(f"config.json: {what}: {a} is not divisible by {b}")
    return a // b
