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
from peftcalc.model.spec import ModelSpec, Scope

CATALOGUE_DIR = Path(__file__).with_name("catalogue")


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    entries = {}
    for path in sorted(CATALOGUE_DIR.glob("*.json")):
        e = _read(path)
        if e["name"] != path.stem:
            raise RuntimeError(f"{path}: name {e['name']!r} does not match the file name")
        entries[e["name"]] = e
    return entries


def model_names() -> list[str]:
    return list(_entries())


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def find(name: str) -> str | None:
    """The catalogue name of `name` (a catalogue name or a Hugging Face id, any case), or None."""
    return _lookup_key(name)


def unknown_model(name: str) -> PeftcalcError:
    close = difflib.get_close_matches(name.lower(), model_names(), n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return PeftcalcError(f"unknown model {name!r}{hint} (`peftcalc models` lists them all; a Hugging Face id "
                         "such as Qwen/Qwen3-8B or --config PATH work too)")


def _lookup_key(name: str) -> str | None:
    key = name.strip().lower()
    if "/" not in key and (CATALOGUE_DIR / f"{key}.json").is_file():
        return key  # the common case reads one file, not the whole catalogue
    entries = _entries()
    if key in entries:
        return key
    for k, e in entries.items():  # the Hugging Face id works too: meta-llama/Llama-2-7b-hf
        if e.get("hf_id", "").lower() == key:
            return k
    return None


@lru_cache(maxsize=None)
def get_model(name: str, scope: Scope = "text") -> ModelSpec:
    """The catalogue model `name` (or its Hugging Face id); unknown names fail with the closest ones.
    `scope` "full" takes every tower of a multimodal checkpoint (default: the language model and its head)."""
    key = _lookup_key(name)
    if key is None:
        raise unknown_model(name)
    e = _read(CATALOGUE_DIR / f"{key}.json")
    return spec_from_config(e["config"], e["name"], e["source"], scope, shipped=e["name"])


def entry(name: str) -> dict:
    """The raw catalogue entry (name, hf_id, source, config)."""
    return _entries()[name]
