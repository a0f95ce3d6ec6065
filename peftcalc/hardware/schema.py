"""Field-by-field validation of the hardware catalogue's JSON objects (GPUs, nodes, their links), shared so that a
typo in any of them fails the same way: with the file, the entry and the field named, never a KeyError later on.

A schema maps each field to (accepted JSON types, nullable, required in a user file, must be > 0 rather than >= 0).
Built-in files are `strict`: every field must be present.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Mapping

from peftcalc.errors import PeftcalcError

Schema = Mapping[str, tuple[tuple[type, ...], bool, bool, bool]]

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
DATE_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}


def defaults_of(schema: Schema) -> dict[str, Any]:
    """What an optional field becomes when a user file leaves it out."""
    return {name: (None if nullable else "") for name, (_t, nullable, required, _p) in schema.items() if not required}


def check_fields(raw: Any, schema: Schema, label: str, *, strict: bool, what: str,
                 optional_in_strict: tuple[str, ...] = ("notes",)) -> dict[str, Any]:
    """The values of `raw` checked against `schema` (missing optional fields take their defaults)."""
    if not isinstance(raw, dict):
        raise PeftcalcError(f"{label}: expected a JSON object with {what} fields, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in schema]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(schema), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(schema)}"
        raise PeftcalcError(f"{label}: unknown field {k!r}{hint}")
    defaults = defaults_of(schema)
    values: dict[str, Any] = {}
    for name, (types, nullable, required, positive) in schema.items():
        if name not in raw:
            if required or (strict and name not in optional_in_strict):
                raise PeftcalcError(f"{label}: missing required field {name!r}")
            values[name] = defaults[name]
            continue
        values[name] = _checked(raw[name], name, types, nullable, positive, label)
    return values


def _checked(value: Any, name: str, types: tuple[type, ...], nullable: bool, positive: bool, label: str) -> Any:
    if value is None:
        if not nullable:
            raise PeftcalcError(f"{label}: field {name!r} must not be null")
        return None
    # bool is an int subclass in Python, and 80.0 is not an integer byte count
    if isinstance(value, bool) or not isinstance(value, types):
        wanted = " or ".join(TYPE_NAMES[t] for t in types) + (" or null" if nullable else "")
        raise PeftcalcError(f"{label}: field {name!r} must be {wanted}, got {json.dumps(value)}")
    if isinstance(value, (int, float)) and (value < 0 or (positive and value == 0)):
        sign = "positive" if positive else "non-negative"
        raise PeftcalcError(f"{label}: field {name!r} must be {sign}, got {value}")
    return value


def check_id(value: str, label: str, example: str) -> None:
    if not ID_RE.match(value):
        raise PeftcalcError(f"{label}: field 'id' must be a short lower-case name like {example!r} "
                            f"(letters, digits, '.', '_', '+', '-'), got {value!r}")


def check_dates(values: Mapping[str, Any], names: tuple[str, ...], label: str) -> None:
    for name in names:
        if values[name] is not None and not DATE_RE.match(values[name]):
            raise PeftcalcError(f"{label}: field {name!r} must be YYYY-MM, got {values[name]!r}")


def entry_label(raw: Any, index: int | None) -> str:
    where = f"entry {index}" if index is not None else "entry"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return f"{where} (id {raw['id']!r})"
    return where


def read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PeftcalcError(f"cannot read {what} file {str(path)!r}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PeftcalcError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def entries(data: Any, path: Path, what: str) -> list[tuple[Any, int | None]]:
    """The objects of a user file: one object, or a non-empty list of them (with their index)."""
    if isinstance(data, dict):
        return [(data, None)]
    if isinstance(data, list):
        if not data:
            raise PeftcalcError(f"{path}: the list of {what}s is empty")
        return [(item, i) for i, item in enumerate(data)]
    raise PeftcalcError(f"{path}: expected a {what} object or a list of them, got {type(data).__name__}")
