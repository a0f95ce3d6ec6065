"""`peftcalc validate --published`: the table, the groups, the filters, --json, the files it writes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from peftcalc.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_text_shows_groups_reasons_and_the_gate():
    r = run("validate", "--published")
    assert r.exit_code == 0, r.output
    assert "== transformers" in r.output and "== litgpt" in r.output and "== torchtune" in r.output
    assert "model code: litgpt's own model code" in r.output
    assert "== not predicted" in r.output and "GPTQ base (auto_gptq) not modelled" in r.output
    assert "gate (" in r.output and "worst gated records:" in r.output and "by quantity:" in r.output


def test_filters_and_json():
    r = run("validate", "--published", "--framework", "litgpt", "--confidence", "high", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["records"] and all(x["framework"] == "litgpt" and x["confidence"] == "high" for x in d["records"])
    rec = d["records"][0]
    assert {"measured_bytes", "predicted_bytes", "error_percent", "compared_with", "not_predicted", "flags"} <= set(rec)
    assert {"gate", "one_gpu", "groups", "counts", "worst"} <= set(d["summary"])
    only = json.loads(run("validate", "--published", "--method", "qlora", "--source", "litgpt/rt", "--json").output)
    assert {x["method"] for x in only["records"]} == {"qlora"}


def test_bad_filters_and_mixing_are_one_line_errors():
    r = run("validate", "--published", "--framework", "nobody")
    assert r.exit_code == 1 and "no published record matches the filters" in r.output
    r = run("validate", "--framework", "litgpt")
    assert r.exit_code == 1 and "go with --published" in r.output


def test_writes_bands_and_predictions(tmp_path):
    bands, table = tmp_path / "bands.json", tmp_path / "pred.jsonl"
    r = run("validate", "--published", "--write-bands", str(bands), "--write-predictions", str(table))
    assert r.exit_code == 0, r.output
    kinds = json.loads(bands.read_text())["kinds"]
    assert kinds["qlora"]["runs"] >= 1 and kinds["qlora"]["p90_percent"] >= 0
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert len(rows) >= 628 and any("not_predicted" in x for x in rows) and any("predicted_bytes" in x for x in rows)
