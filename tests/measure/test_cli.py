"""`peftcalc measure` and `peftcalc bench`: output formats, and bad input -> one-line error, exit 1, no traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from peftcalc.cli import main

from .tiny_models import TINY_CONFIGS


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "tiny" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(TINY_CONFIGS["llama"]))
    return str(p)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_measure_text_table(config):
    r = invoke("measure", "--config", config, "--method", "lora", "--seq", "16")
    assert r.exit_code == 0, r.output
    assert "trace on cpu (fake tensors) -> ok" in r.output
    for word in ("measured", "predicted", "peak phase", "optimizer states", "trainable parameters: 3,584"):
        assert word in r.output


def test_measure_json_is_the_contract(config):
    r = invoke("measure", "--config", config, "--method", "prompt", "--seq", "16", "--backend", "run", "--json",
               "--timed-steps", "1")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["backend"] == "run" and d["status"] == "ok" and d["method"] == "prompt"
    assert set(d["measured_bytes"]) == {"weights", "gradients", "optimizer_states", "activations", "peak"}
    assert d["checkpoint_bytes"] > 0 and d["tokens_per_second"] > 0


def test_measure_csv(config):
    r = invoke("measure", "--config", config, "--method", "full", "--seq", "16", "--csv")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == "quantity,measured_bytes,predicted_bytes,difference_bytes,difference_percent"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["weights", "gradients", "optimizer_states", "activations", "peak"]


@pytest.mark.parametrize("args,message", [
    (["--method", "lora", "--device", "cuda"], "--device applies to --backend run"),
    (["--method", "lora", "--nproc", "2"], "--backend run"),
    (["--method", "lora", "--nproc", "0"], "--nproc"),
    (["--method", "lora", "--zero", "3"], "--nproc N"),
    (["--method", "lora", "--rank", "0"], "--rank"),
    (["--method", "prefix", "--gradient-checkpointing"], "unsupported: prefix tuning"),
    (["--method", "lora", "--json", "--csv"], "exclusive"),
])
def test_measure_bad_input_is_a_clean_error(config, args, message):
    r = invoke("measure", "--config", config, "--seq", "16", *args)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output


def test_measure_unknown_model_and_missing_method():
    r = invoke("measure", "--model", "llama-9", "--method", "lora")
    assert r.exit_code == 1 and "unknown model" in r.output
    r = invoke("measure", "--model", "llama-2-7b")
    assert r.exit_code == 2 and "--method" in r.output


def test_bench_list_and_run(tmp_path, config):
    suite = tmp_path / "suites" / "t.toml"
    suite.parent.mkdir()
    suite.write_text(f'name = "t"\n[defaults]\nseq = 16\nprecision = "fp32"\n[[matrix]]\nconfig = "{config}"\n'
                     'method = ["lora", "prefix"]\ngradient_checkpointing = [false, true]\n')
    r = invoke("bench", str(suite), "--list")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 4
    r = invoke("bench", str(suite), "--results-dir", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert "4 ran (3 ok, 1 unsupported)" in r.output
    lines = (tmp_path / "out" / "t.jsonl").read_text().splitlines()
    assert len(lines) == 4
    r = invoke("bench", str(suite), "--results-dir", str(tmp_path / "out"))
    assert "0 ran" in r.output and "4 already recorded" in r.output


@pytest.mark.parametrize("args,message", [
    (["/no/such/suite.toml"], "suite file not found"),
    (["bench/suites/cpu-small.toml", "--only", "no-such-run"], "no run of cpu-small matches"),
    (["bench/suites/cpu-small.toml", "--time-budget", "0"], "--time-budget"),
])
def test_bench_bad_input_is_a_clean_error(args, message, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    r = invoke("bench", *args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
