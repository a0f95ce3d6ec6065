"""The band beside an estimate: published GPU runs of the same kind where there are any, else CPU traces only."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.uncertainty import PUBLISHED_FILE, band


def test_a_kind_with_published_runs_gets_their_band():
    kinds = json.loads(Path(PUBLISHED_FILE).read_text())["kinds"]
    u = band("qlora", False)
    assert u is not None and u.source == "published" and u.runs == kinds["qlora"]["runs"]
    assert u.text().endswith("published GPU runs") and u.percent == max(kinds["qlora"]["p90_percent"], 0.1)


def test_a_kind_without_gpu_evidence_says_so():
    kinds = json.loads(Path(PUBLISHED_FILE).read_text())["kinds"]
    assert "adapter" not in kinds
    u = band("adapter", False)
    assert u is not None and u.source == "traced" and u.text().startswith("CPU traces only, no GPU evidence")


def test_the_estimate_prints_it():
    r = CliRunner().invoke(main, ["estimate", "--model", "llama-2-7b", "--method", "qlora", "--json"])
    u = json.loads(r.output)["results"][0]["uncertainty"]
    assert u["source"] == "published" and u["runs"] >= 1
    text = CliRunner().invoke(main, ["estimate", "--model", "llama-2-7b", "--method", "adapter"]).output
    assert "CPU traces only" in text
