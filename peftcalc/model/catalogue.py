"""The model catalogue: one JSON file per model under catalogue/, each with its config and its source.

A file holds {"name", "hf_id", "source", "config"}: `config` is the model's Hugging Face config.json
(the keys that matter), `source` says where it was copied from. The exact parameter count is derived
from the config by the family builder, and tests check it against transformers.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path

from peftcalc.errors import PeftcalcError
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec

CATALOGUE_DIR = Path(__file__).with_name("catalogue")


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    entries = {}
    for path in sorted(CATALOGUE_DIR.glob("*.json")):
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["name"] != path.stem:
            raise RuntimeError(f"{path}: name {entry['name']!r} does not match the file name")
        entries[entry["name"]] = entry
    return entries


def model_names() -> list[str]:
    return list(_entries())


def _lookup_key(name: str) -> str | None:
    entries = _entries()
    key = name.strip().lower()
    if key in entries:
        return key
    for k, e in entries.items():  # the Hugging Face id works too: meta-llama/Llama-2-7b-hf
        if e.get("hf_id", "").lower() == key:
            return k
    return None


@lru_cache(maxsize=None)
def get_model(name: str) -> ModelSpec:
    """The catalogue model `name` (or its Hugging Face id); unknown names fail with the closest ones."""
    key = _lookup_key(name)
    if key is None:
        close = difflib.get_close_matches(name.lower(), model_names(), n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PeftcalcError(f"unknown model {name!r}{hint} (`peftcalc models` lists them all)")
    e = _entries()[key]
    return spec_from_config(e["config"], e["name"], e["source"])


def hf_id(name: str) -> str:
    return _entries()[name].get("hf_id", "")
