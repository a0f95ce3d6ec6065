"""`peftcalc validate`: the analytic model against the committed measured steps (the CI gate of issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.results.files import read_records
from peftcalc.uncertainty import band
from peftcalc.validation import compare_all, history, summarize

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
ACCURACY = RESULTS / "cpu-accuracy.jsonl"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def records():
    if not ACCURACY.exists():
        pytest.skip("bench/results/cpu-accuracy.jsonl not committed")
    return read_records([ACCURACY])


def test_committed_results_pass_the_gate():
    """CI: every committed result in bench/results against the current analytic model: >= 95 % of runs within
    2 % of the traced peak, all within 5 %; weights, gradients and optimizer states to the byte."""
    from peftcalc.results.files import committed_results

    if not committed_results():
        pytest.skip("no committed results")
    r = run("validate")
    assert r.exit_code == 0, r.output[-3000:]
    assert "PASSED" in r.output and "median |peak error|" in r.output


def test_the_accuracy_suite_meets_issue_4(records):
    comparisons = compare_all(records)
    s = summarize(comparisons)
    assert s.runs >= 60 and s.passed, (s.runs, s.within, s.max)
    assert len({c.family for c in comparisons}) >= 8
    assert {c.method for c in comparisons} >= {"full", "lora", "qlora", "dora", "adapter", "prompt", "prefix",
                                                "ptuning", "ia3"}
    setups = [c.setup for c in comparisons]
    assert len({s.seq_len for s in setups}) >= 3 and {s.batch_size for s in setups} >= {1, 4}
    assert {s.gradient_checkpointing for s in setups} == {False, True}
    assert {s.attention for s in setups} == {"sdpa", "eager"}
    assert {s.adamw_impl for s in setups} == {"forloop", "foreach", "fused"}
    for key in ("weights", "gradients", "optimizer_states"):
        assert s.exact[key] == s.runs, key


def test_table_json_and_worst(records):
    r = run("validate", str(ACCURACY), "--json", "--worst", "3")
    assert r.exit_code == 0, r.output[-2000:]
    d = json.loads(r.output)
    assert {"runs", "median_percent", "p90_percent", "max_percent", "passed", "exact_to_the_byte"} <= set(d["summary"])
    assert len(d["runs"]) == 3
    errs = [abs(x["relative_error_percent"]["peak"]) for x in d["runs"]]
    assert errs == sorted(errs, reverse=True)
    text = run("validate", str(ACCURACY), "--worst", "2")
    assert text.exit_code == 0 and "peak err" in text.output and "gate:" in text.output


def test_a_wrong_measurement_fails_the_gate(tmp_path, records):
    bad = []
    for rec in records[:5]:
        d = rec.to_dict()
        if d["status"] == "ok":
            d["measured_bytes"]["peak"] = int(d["measured_bytes"]["peak"] * 1.1)  # 10 % off
        bad.append(json.dumps(d))
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(bad) + "\n{\"partial line", encoding="utf-8")  # a killed writer's last line is skipped
    r = run("validate", str(f))
    assert r.exit_code == 1 and "FAILED" in r.output
    loose = run("validate", str(f), "--tolerance", "20", "--max-tolerance", "20")
    assert loose.exit_code == 0, loose.output[-1500:]


def test_history_gives_the_estimate_its_band(records):
    h = history(compare_all(records))
    assert h["kinds"]["all"]["runs"] >= 60
    assert h["kinds"]["lora"]["max_percent"] >= 0
    u = band("adapter", False)  # a kind no published GPU run covers: its band is the traced steps'
    assert u is not None and u.runs >= 1 and u.source == "traced" and "traced steps" in u.text()
    r = run("estimate", "--model", "llama-2-7b", "--method", "lora", "--json")
    res = json.loads(r.output)["results"][0]
    assert res["uncertainty"]["runs"] >= 1 and res["uncertainty"]["percent"] >= 0
    mb = res["memory_bytes"]
    assert mb["total"] == mb["tensor_peak"] + mb["overhead"]  # every overhead line sits above the tensors
    assert mb["tensor_peak"] <= mb["peak"] <= mb["reserved"] <= mb["total"]
    assert "\nuncertainty " in run("estimate", "--model", "llama-2-7b", "--method", "lora").output


def test_overhead_lines_are_overridable():
    base = json.loads(run("estimate", "--model", "gpt2", "--method", "lora", "--json").output)["results"][0]
    names = [l["name"] for l in base["overhead_lines"]]
    assert names == ["workspace", "rounding", "segments", "fragmentation", "context"]
    assert [l["level"] for l in base["overhead_lines"]] == ["allocated", "allocated", "reserved", "reserved", "device"]
    assert all(l["source"] for l in base["overhead_lines"])
    none = json.loads(run("estimate", "--model", "gpt2", "--method", "lora", "--json", "--overhead", "none").output)
    m = none["results"][0]["memory_bytes"]
    assert m["overhead"] == 0 and m["total"] == m["reserved"] == m["peak"] == m["tensor_peak"]
    ctx = json.loads(run("estimate", "--model", "gpt2", "--method", "lora", "--json", "--overhead",
                         "context=1GiB,fragmentation=0").output)["results"][0]
    lines = {l["name"]: l for l in ctx["overhead_lines"]}
    assert lines["context"]["bytes"] == 2**30 and lines["context"]["source"] == "given with --overhead"
    assert lines["fragmentation"]["bytes"] == 0
    bad = run("estimate", "--model", "gpt2", "--overhead", "heap=3")
    assert bad.exit_code != 0 and "NAME=SIZE" in bad.output


def test_adamw_impl_changes_the_optimizer_peak():
    peaks = {}
    for impl in ("forloop", "foreach", "fused"):
        d = json.loads(run("estimate", "--model", "qwen2.5-0.5b", "--method", "full", "--seq", "64",
                           "--adamw-impl", impl, "--json").output)["results"][0]["memory_bytes"]
        peaks[impl] = d["optimizer_peak"]
    assert peaks["fused"] < peaks["forloop"] < peaks["foreach"]


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    r = run("validate", str(empty))
    assert r.exit_code != 0 and "no successful measured run" in r.output
    r = run("validate", str(empty), "--tolerance", "-1")
    assert r.exit_code != 0 and "--tolerance" in r.output


def test_trace_a_suite(tmp_path):
    pytest.importorskip("torch")
    cfg = tmp_path / "tiny" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(dict(model_type="llama", hidden_size=128, intermediate_size=352, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=4, vocab_size=512)), encoding="utf-8")
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\n[defaults]\nbackend = "trace"\nseq = 64\nsave_checkpoint = false\n'
                     '[[matrix]]\nconfig = "tiny/config.json"\nmethod = ["full", "lora"]\n', encoding="utf-8")
    r = run("validate", "--trace", str(suite))
    assert r.exit_code == 0, r.output[-2000:]
    assert "2 runs" in r.output and "PASSED" in r.output
