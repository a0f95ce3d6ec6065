"""Reading a config file into a mapping: YAML or JSON, with one-line errors that name the file and the place.

PyYAML's safe loader (what axolotl, TRL, LLaMA-Factory and torchtune's OmegaConf build on) with one change: a key
written twice in one mapping is an error here, where the frameworks silently keep the last — a pre-flight check
should not guess which one the author meant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftcalc.errors import InputError

MAX_CONFIG_BYTES = 16 * 2**20  # a training config is a few kB; anything this large is something else


def _loader():  # -> type[yaml.SafeLoader]
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark)
                try:
                    seen[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: let PyYAML report it
                    break
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"{p}: a folder, not a config file")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"{p}: {p.stat().st_size:,} bytes is too large for a training config")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text file (not UTF-8), so not a training config") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read it: {e.strerror or e}") from None


def parse(text: str, path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping. JSON for *.json (and text that starts like JSON), YAML otherwise."""
    p = Path(path)
    stripped = text.lstrip()
    if p.suffix.lower() == ".json" or stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    else:
        data = _parse_yaml(text, p)
    if data is None:
        raise InputError(f"{p}: empty, no fields to read")
    if not isinstance(data, dict):
        raise InputError(f"{p}: the top level is a {_kind_of(data)}, not a mapping of fields, so not a training "
                         "config")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InputError(f"{p}: field names must be text, found {bad[0]!r}")
    return data


def _parse_yaml(text: str, p: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "expected a single document" in str(e):
            problem = "several YAML documents (---) in one file; give one training config per file"
        raise InputError(f"{p}: malformed YAML{where}: {problem}") from None


def _kind_of(value: Any) -> str:
    return {list: "list", str: "plain text", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


def load(path: str | Path) -> dict[str, Any]:
    return parse(read_text(path), path)
