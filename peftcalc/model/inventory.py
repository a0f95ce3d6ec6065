"""The derived-inventory format (plain JSON; peftcalc/measure/derive.py writes it, model/derived.py reads it) and
its keys: no torch, no other peftcalc module."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

INVENTORY_FORMAT = 1


def config_sha256(cfg: Mapping[str, Any]) -> str:
    """The content hash of a config dict: canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def inventory_key(cfg_sha: str, scope: str, transformers_version: str) -> str:
    """The cache key of an inventory: the config's content, the scope, and the transformers that built it."""
    return f"{cfg_sha[:32]}-{scope}-transformers{transformers_version}"


def format_layers(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts: list[str] = []
    i = 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        parts.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
        i = j + 1
    return ",".join(parts)


def parse_layers(text: str) -> tuple[int, ...]:
    """"0-2,5" -> (0, 1, 2, 5)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def inventory_text(inv: Mapping[str, Any]) -> str:
    """The JSON text an inventory is written as (shipped and cached alike): deterministic, one key per line."""
    return json.dumps(inv, indent=1, allow_nan=True) + "\n"
