"""Bench suites: TOML matrices expand as written; results are appended durably, survive a killed writer,
resume per environment, and a failing run does not stop the suite."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.measure.suite import load_suite, results_path, run_label, run_suite
from peftcalc.results.files import read_lines
from peftcalc.results.record import Environment, MeasureResult
from peftcalc.results.request import RunRequest
from peftcalc.methods import METHODS
from peftcalc.model.catalogue import model_names

from .tiny_models import TINY_CONFIGS

ROOT = Path(__file__).resolve().parents[2]
ENV = Environment("t", "x", "p", "cpu", "abc")


def read_records(path: Path) -> list[dict]:
    return [obj for _, obj in read_lines(path)]


def _suite(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suites" / "s.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


SUITE = """
name = "s"
[defaults]
seq = 64
[[matrix]]
model = ["llama-2-7b", "gpt2-xl"]
method = ["full", "lora", "prefix"]
gradient_checkpointing = [false, true]
[[exclude]]
method = "prefix"
gradient_checkpointing = true
"""


def test_matrix_expands_with_axes_defaults_and_excludes(tmp_path):
    s = load_suite(_suite(tmp_path, SUITE))
    assert s.name == "s" and len(s.runs) == 2 * 3 * 2 - 2
    r0 = s.runs[0]
    assert r0.setup.seq_len == 64 and r0.backend == "trace" and r0.setup.precision == "bf16"
    assert not any(r.method == "prefix" and r.setup.gradient_checkpointing for r in s.runs)
    assert len({r.key for r in s.runs}) == len(s.runs)
    assert results_path(s, None) == tmp_path / "results" / "s.jsonl"


@pytest.mark.parametrize("text,message", [
    ("name='s'\n", "no \\[\\[matrix\\]\\]"),
    ("[[matrix]]\nmodel='a'\nmethod='lora'\nsequence=[1]\n", "unknown key"),
    ("[[matrix]]\nmethod='lora'\n", "exactly one of model"),
    ("name = [\n", "not valid TOML"),
])
def test_bad_suites_fail_with_the_file_and_entry(tmp_path, text, message):
    with pytest.raises(PeftcalcError, match=message):
        load_suite(_suite(tmp_path, text))


def test_missing_suite_file(tmp_path):
    with pytest.raises(PeftcalcError, match="not found"):
        load_suite(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["cpu-small", "gpu"])
def test_committed_suites_name_real_models_and_methods(name):
    s = load_suite(ROOT / "bench" / "suites" / f"{name}.toml")
    assert s.runs
    for r in s.runs:
        assert r.model in model_names()
        assert r.method in METHODS


def test_cpu_suite_covers_what_the_issue_asks():
    s = load_suite(ROOT / "bench" / "suites" / "cpu-small.toml")
    models = {r.model for r in s.runs}
    assert {"llama-2-7b", "mistral-7b", "qwen2.5-7b", "phi-3-mini", "gemma-2b", "gpt2-xl", "t5-large",
            "mixtral-8x7b"} <= models
    assert {"full", "lora", "qlora", "dora", "prompt", "prefix"} <= {r.method for r in s.runs}
    assert len({r.setup.seq_len for r in s.runs}) >= 3 and {r.setup.gradient_checkpointing for r in s.runs} == {False, True}
    assert {r.backend for r in s.runs} == {"trace"}


def test_gpu_suite_runs_real_steps_with_foreach_and_fused():
    s = load_suite(ROOT / "bench" / "suites" / "gpu.toml")
    assert {r.backend for r in s.runs} == {"run"}
    assert {"foreach", "fused"} <= {r.setup.adamw_impl for r in s.runs}
    assert {"full", "lora"} <= {r.method for r in s.runs} and len({r.setup.seq_len for r in s.runs}) >= 3
    assert s.time_budget_s is not None and s.time_budget_s <= 420


def _fake_runner(fail: set[str]):
    calls: list[str] = []

    def runner(run: RunRequest) -> MeasureResult:
        calls.append(run_label(run))
        if run.method in fail:
            raise RuntimeError("boom")
        return MeasureResult("trace", "cpu", "ok", None, run.setup, run.method, None, None, None, None, None, None,
                             None, (), ENV)
    return runner, calls


@pytest.mark.slow
def test_resume_skips_recorded_runs_and_failures_do_not_stop_the_suite(tmp_path):
    s = load_suite(_suite(tmp_path, SUITE))
    runner, calls = _fake_runner({"prefix"})
    first = run_suite(s, tmp_path / "out", runner=runner, environment_of=lambda b: ENV)
    assert first.ran == len(s.runs) and first.statuses == {"ok": 8, "error": 2}
    recs = read_records(tmp_path / "out" / "s.jsonl")
    assert len(recs) == len(s.runs)
    assert all(r["suite"] == "s" and "run_key" in r and "run" in r for r in recs)
    assert [r["detail"]["error"] for r in recs if r["status"] == "error"] == ["RuntimeError: boom"] * 2

    runner2, calls2 = _fake_runner(set())
    again = run_suite(s, tmp_path / "out", runner=runner2, environment_of=lambda b: ENV)
    assert again.ran == 0 and again.skipped == len(s.runs) and calls2 == []
    retry = run_suite(s, tmp_path / "out", retry_failed=True, runner=runner2, environment_of=lambda b: ENV)
    assert retry.ran == 2 and all("prefix" in c for c in calls2)

    other = Environment("another version", "x", "p", "cpu", "abc")  # another environment measures again; the commit does not
    runner3, calls3 = _fake_runner(set())
    run_suite(s, tmp_path / "out", runner=runner3, environment_of=lambda b: Environment("t", "x", "p", "cpu", "new"))
    assert calls3 == []
    run_suite(s, tmp_path / "out", runner=runner3, environment_of=lambda b: other)
    assert len(calls3) == len(s.runs)


def test_a_suite_moved_to_another_checkout_resumes(tmp_path):
    """Config paths are recorded absolute; the run key compares them from the suite's bench/ folder on, so a clone
    or worktree does not run (and append) what another checkout recorded."""
    text = '[[matrix]]\nconfig = "configs/c/config.json"\nmethod = "lora"\n'
    runs = []
    for where in ("a", "b"):
        folder = tmp_path / where / "bench" / "suites"
        (folder / "configs" / "c").mkdir(parents=True)
        (folder / "configs" / "c" / "config.json").write_text("{}")
        (folder / "s.toml").write_text('name = "s"\n' + text)
        runs.append(load_suite(folder / "s.toml").runs[0])
    assert runs[0].config != runs[1].config and runs[0].key == runs[1].key
    runner, calls = _fake_runner(set())
    run_suite(load_suite(tmp_path / "a" / "bench" / "suites" / "s.toml"), tmp_path / "out", runner=runner,
              environment_of=lambda b: ENV)
    again = run_suite(load_suite(tmp_path / "b" / "bench" / "suites" / "s.toml"), tmp_path / "out", runner=runner,
                      environment_of=lambda b: ENV)
    assert len(calls) == 1 and again.skipped == 1


def test_time_budget_leaves_runs_for_later(tmp_path):
    s = load_suite(_suite(tmp_path, SUITE))
    runner, calls = _fake_runner(set())
    out = run_suite(s, tmp_path / "out", time_budget_s=-1, runner=runner, environment_of=lambda b: ENV)
    assert out.ran == 0 and out.not_started == len(s.runs) and calls == []


def _tiny_suite(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TINY_CONFIGS["llama"]))
    return _suite(tmp_path, f"""
name = "tiny"
[defaults]
seq = 16
batch = 2
precision = "fp32"
timed_steps = 1
[[matrix]]
config = "{cfg}"
method = ["lora", "prompt"]
backend = ["trace", "run"]
""")


@pytest.mark.slow
def test_a_real_tiny_suite_end_to_end(tmp_path):
    s = load_suite(_tiny_suite(tmp_path))
    summary = run_suite(s, tmp_path / "out")
    assert summary.statuses == {"ok": 4}
    recs = read_records(tmp_path / "out" / "tiny.jsonl")
    by = {(r["run"]["method"], r["backend"]): r for r in recs}
    for method in ("lora", "prompt"):
        assert by[(method, "trace")]["measured_bytes"] == by[(method, "run")]["measured_bytes"]
        assert by[(method, "run")]["step_seconds"] > 0


@pytest.mark.slow
def test_gpu_script_runs_from_a_checkout_without_the_package(tmp_path):
    """The GPU script, on the CPU with a tiny suite: PYTHONPATH only, results in the given folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = str(Path(os.sys.executable))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path / "gpu-out"),
                           str(_tiny_suite(tmp_path))], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = read_records(tmp_path / "gpu-out" / "tiny.jsonl")
    assert len(recs) == 4 and {r["status"] for r in recs} == {"ok"}
    assert (tmp_path / "gpu-out" / "gpu_suite.log").exists()
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "OUT_DIR" in proc.stdout
