"""Files written by commands (--out, --write-history): an unwritable place is a one-line error with exit 2 and
no traceback, found before any work, and nothing is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main


@pytest.mark.parametrize("out", ["/proc/x", "/proc/x/y", "/dev/null/report"])
def test_report_to_an_unwritable_place(out):
    r = CliRunner().invoke(main, ["report", "--model", "gpt2", "--out", out])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error: cannot write --out") and r.output.count("\n") == 1
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_report_into_a_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        r = CliRunner().invoke(main, ["report", "--model", "gpt2", "--out", str(folder / "rep")])
        assert r.exit_code == 2 and "cannot write" in r.output and list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_report_over_a_file(tmp_path):
    f = tmp_path / "keep.txt"
    f.write_text("mine")
    r = CliRunner().invoke(main, ["report", "--model", "gpt2", "--out", str(f)])
    assert r.exit_code == 2 and "is a file" in r.output and f.read_text() == "mine"


@pytest.mark.parametrize("args", [["--write-history", "/proc/x/history.json"],
                                  ["--published", "--write-bands", "/proc/x/bands.json"],
                                  ["--published", "--write-predictions", "/proc/x/p.jsonl"]])
def test_validate_to_an_unwritable_place_fails_before_the_work(args):
    r = CliRunner().invoke(main, ["validate", *args])
    assert r.exit_code == 2 and "cannot write" in r.output and r.output.count("\n") == 1, r.output


def test_bench_to_an_unwritable_results_dir():
    """Checked before the first run, not after minutes of tracing."""
    suite = Path(__file__).resolve().parents[2] / "bench" / "suites" / "cpu-small.toml"
    r = CliRunner().invoke(main, ["bench", str(suite), "--results-dir", "/proc/x"])
    assert r.exit_code == 2 and "cannot write --results-dir" in r.output and r.output.count("\n") == 1, r.output
