"""Read the published records: every bench/published/memory/*.jsonl of a checkout, or the files given.

    >>> records = load_records()                      # doctest: +SKIP
    >>> len(records), records[0].id                   # doctest: +SKIP
    (628, 'answerai-fsdp-qlora/3090/llama2-7b-qlora-ctx512-bs1')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from peftcalc.errors import PeftcalcError
from peftcalc.evidence.record import PublishedRecord

REPO_ROOT = Path(__file__).resolve().parents[2]  # a checkout's root (meaningless in an installed wheel)
PUBLISHED_DIR = REPO_ROOT / "bench" / "published" / "memory"


def published_files(paths: Iterable[str | Path] = ()) -> list[Path]:
    """The JSON-lines files named (folders: their *.jsonl), else the checkout's bench/published/memory."""
    given = [Path(p) for p in paths]
    if not given:
        if not PUBLISHED_DIR.is_dir():
            raise PeftcalcError(f"no published records at {PUBLISHED_DIR}: run from a checkout or give the files")
        given = [PUBLISHED_DIR]
    out: list[Path] = []
    for p in given:
        if p.is_dir():
            out += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise PeftcalcError(f"{p}: no such file or folder")
    if not out:
        raise PeftcalcError(f"no *.jsonl files in {', '.join(str(p) for p in given)}")
    return out


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def read_file(path: Path) -> list[PublishedRecord]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{_display(path)}:{n}"
            try:
                d = json.loads(line)
            except ValueError as e:
                raise PeftcalcError(f"{where}: not a JSON object ({e})") from None
            out.append(PublishedRecord.from_dict(d, where))
    return out


def load_records(paths: Iterable[str | Path] = ()) -> tuple[PublishedRecord, ...]:
    """Every record of the files, in file order; ids must be unique across them."""
    records: list[PublishedRecord] = []
    seen: dict[str, str] = {}
    for path in published_files(paths):
        for r in read_file(path):
            if r.id in seen:
                raise PeftcalcError(f"{r.where}: field 'id': {r.id!r} already used at {seen[r.id]}")
            seen[r.id] = r.where
            records.append(r)
    return tuple(records)
