"""Results files: one JSON line per run, appended durably, read back as typed records.

A line is `MeasureResult.to_dict()` plus, for a bench suite's run, "suite", "run" (the run's keys),
"run_key", "recorded_at" and "run_seconds". Each line is appended with one `os.write` of the whole line,
then `fsync`; a writer killed mid-write can leave a partial last line, which readers skip and the next
append cuts off first, so a results file never breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from peftcalc.errors import PeftcalcError
from peftcalc.results.record import MeasureResult
from peftcalc.results.request import RunRequest

REPO_ROOT = Path(__file__).resolve().parents[2]  # a checkout's root (meaningless in an installed wheel)


@dataclass(frozen=True)
class Record:
    """One line of a results file: a result and, from a bench suite, the run that asked for it."""

    result: MeasureResult
    request: RunRequest | None = None
    suite: str | None = None
    recorded_at: str | None = None
    run_seconds: float | None = None
    source: str = ""  # "file.jsonl:line" where it was read (not written)

    def to_dict(self) -> dict[str, Any]:
        d = self.result.to_dict()
        if self.request is not None:
            d.update(suite=self.suite, run=self.request.keys(), run_key=self.request.key,
                     recorded_at=self.recorded_at, run_seconds=self.run_seconds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> "Record":
        run = d.get("run")
        return cls(MeasureResult.from_dict(d), RunRequest.from_keys(run) if run else None, d.get("suite"),
                   d.get("recorded_at"), d.get("run_seconds"), source)

    @property
    def run_key(self) -> str | None:
        return self.request.key if self.request is not None else None


def repair_tail(path: Path) -> None:
    """Cut off a partial last line left by a writer killed mid-write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)  # 0 when the only line is partial


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line durably: the whole line in one write, then flush to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every JSON line of one file. A partial last line (a killed writer) is skipped;
    any other line that is not a JSON object fails with the file and line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.rstrip().endswith("}"):
                continue
            raise PeftcalcError(f"{path}:{i}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise PeftcalcError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        out.append((i, obj))
    return out


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """The *.jsonl files named, or inside the folders named, in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise PeftcalcError(f"no *.jsonl results files in {str(p)!r}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PeftcalcError(f"no results at {str(p)!r}: give a folder of *.jsonl files (e.g. bench/results/)")
    return files


def read_records(paths: Iterable[str | Path]) -> list[Record]:
    """Every record of the given files or folders, in file then line order."""
    records = []
    for f in results_files(paths):
        for i, obj in read_lines(f):
            try:
                records.append(Record.from_dict(obj, f"{f.name}:{i}"))
            except (PeftcalcError, TypeError, ValueError) as e:
                raise PeftcalcError(f"{f}:{i}: not a result record: {e}") from None
    return records


def committed_results() -> list[Path]:
    """The results files committed to the repository (`git ls-files bench/results/*.jsonl`); outside a git
    checkout, every bench/results/*.jsonl there is."""
    folder = REPO_ROOT / "bench" / "results"
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "--", "bench/results/*.jsonl"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return [REPO_ROOT / line for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
