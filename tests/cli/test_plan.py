"""`peftcalc plan` and `peftcalc gpus`: the JSON contract, the published facts through the CLI, bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from peftcalc.cli import COMMANDS, main
from peftcalc.hardware.catalogue import gpu_ids
from peftcalc.methods import DEFAULT_TABLE
from peftcalc.units import GB

CONTRACT = {"gpu", "num_gpus", "method", "fits", "per_gpu_bytes", "limiting_component", "max_batch_size",
            "max_seq_len", "hours", "rent_usd", "purchase_usd", "nodes", "step_seconds", "step_seconds_by_part"}

LLAMA_65B = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 64, "intermediate_size": 22016, "vocab_size": 32000,
             "max_position_embeddings": 2048, "tie_word_embeddings": False}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def ok_json(*args: str) -> dict:
    r = run("plan", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def as_asked(d: dict, gpu: str, method: str) -> dict:
    return next(o for o in d["options"] if o["gpu"] == gpu and o["method"] == method and o["kind"] == "as asked")


def test_json_contract_every_option():
    d = ok_json("--params", "7e9", "--gpu", "rtx-4090", "--gpu", "a100-80gb", "--gpu", "h100-80gb",
                "--precision", "bf16-mixed")
    assert {"options", "assumptions"} <= set(d)
    for o in d["options"]:
        assert CONTRACT <= set(o)
        assert isinstance(o["fits"], bool) and isinstance(o["per_gpu_bytes"], int) and o["num_gpus"] >= 1
        for k in ("max_batch_size", "max_seq_len", "purchase_usd"):
            assert o[k] is None or (isinstance(o[k], int) and o[k] > 0)
        for k in ("hours", "rent_usd"):
            assert o[k] is None or o[k] > 0
        if o["verdict"] == "does not fit":  # nothing runs: no time, no money, no sentinel either
            assert o["hours"] is None and o["rent_usd"] is None and o["purchase_usd"] is None
            assert o["fits_with"] is None and o["run"] is None and o["step_seconds"] is None
        elif o["hours"] is not None:  # the step by part adds up, and the run is its steps
            parts = o["step_seconds_by_part"]
            assert set(parts) == {"compute", "communication", "offload"}
            assert sum(parts.values()) == pytest.approx(o["step_seconds"])
            steps = 100_000_000 / o["communication"]["tokens_per_step"]
            assert o["hours"] == pytest.approx(steps * o["step_seconds"] / 3600)
            assert o["nodes"] == -(-o["num_gpus"] // 8)
            assert o["num_gpus"] == o["data_parallel"] * o["tensor_parallel"] * o["pipeline_parallel"]
    # without --method, every method on every GPU, fitting or not
    assert {(o["gpu"], o["method"]) for o in d["options"]} == {
        (g, m) for g in ("rtx-4090", "a100-80gb", "h100-80gb") for m in DEFAULT_TABLE}
    assert as_asked(d, "rtx-4090", "full")["fits"] is False
    assert as_asked(d, "rtx-4090", "lora")["fits"] is True
    assert set(d["shortlist"]) == {"cheapest", "fastest", "fewest GPUs"}
    for key in ("compute", "FLOPs", "time", "prices", "limits", "fits with"):
        assert key in d["assumptions"]


def test_qlora_65b_on_a_48gb_gpu(tmp_path):
    """Dettmers et al. 2023: a 65B model fine-tuned on a single 48 GB GPU (NF4, r=64 all-linear, bf16 compute,
    paged 8-bit AdamW, gradient checkpointing, batch 1; 512 tokens assumed)."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_65B))
    d = ok_json("--config", str(tmp_path), "--method", "qlora", "--rank", "64", "--targets", "all-linear",
                "--precision", "bf16", "--optimizer", "paged-adamw-8bit", "--gradient-checkpointing",
                "--batch", "1", "--seq", "512", "--gpu", "a6000", "--gpu", "rtx-4090")
    a6000 = as_asked(d, "a6000", "qlora")
    assert a6000["fits"] is True and a6000["num_gpus"] == 1 and a6000["per_gpu_bytes"] <= 48 * 2**30
    assert as_asked(d, "rtx-4090", "qlora")["fits"] is False


def test_full_7b_vs_24gb():
    d = ok_json("--model", "llama-2-7b", "--precision", "bf16-mixed", "--gpu", "rtx-4090", "--method", "full",
                "--method", "lora", "--method", "qlora")
    assert as_asked(d, "rtx-4090", "full")["fits"] is False
    assert as_asked(d, "rtx-4090", "full")["verdict"] == "does not fit"
    assert as_asked(d, "rtx-4090", "lora")["fits"] is True
    assert as_asked(d, "rtx-4090", "qlora")["fits"] is True


@pytest.mark.parametrize("stage, expected_gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_figure_1(stage, expected_gb):
    """Rajbhandari et al. 2020, Figure 1: 7.5B parameters on 64 GPUs, fp16 mixed precision Adam."""
    d = ok_json("--params", "7.5e9", "--precision", "fp16-mixed", "--gpus", "64", "--zero", str(stage),
                "--max-gpus", "64", "--method", "full", "--gpu", "a100-80gb")
    o = as_asked(d, "a100-80gb", "full")
    assert (o["num_gpus"], o["zero_stage"]) == (64, stage)
    assert o["model_state_bytes"] / GB == pytest.approx(expected_gb, abs=0.05)


def test_text_states_assumptions_and_shortlist():
    r = run("plan", "--model", "mistral-7b", "--method", "full", "--gpu", "h100-80gb", "--max-gpus", "8",
            "--precision", "bf16-mixed")
    assert r.exit_code == 0, r.output
    for text in ("Options", "Fewest GPUs by strategy", "Shortlist", "cheapest #1", "fastest #1", "fewest GPUs #1",
                 "Assumptions", "compute: the replayed step's kernels", "FLOPs: full fine-tuning 6N", "exposed communication", "time: overlap",
                 "Time per optimizer step", "nodes:",
                 "zero-3", "GB = 1,000,000,000 bytes"):
        assert text in r.output, text


def test_issue_examples():
    r = run("plan", "--model", "llama-3.1-70b", "--method", "qlora", "--rank", "16", "--tokens", "50e6", "--epochs", "3")
    assert r.exit_code == 0, r.output
    assert "50,000,000 tokens x 3 epoch(s)" in r.output
    d = ok_json("--params", "7e9", "--gpu", "rtx-4090", "--gpu", "a100-80gb", "--gpu", "h100-80gb")
    assert {o["gpu"] for o in d["options"]} == {"rtx-4090", "a100-80gb", "h100-80gb"}


def test_default_is_every_gpu_and_method():
    d = ok_json("--model", "gpt2")
    assert {(o["gpu"], o["method"]) for o in d["options"]} == {(g, m) for g in gpu_ids() for m in DEFAULT_TABLE}


def test_mfu_tokens_and_epochs_scale_time():
    base = as_asked(ok_json("--model", "llama-2-7b", "--method", "lora", "--gpu", "a100-80gb", "--precision",
                            "bf16-mixed", "--mfu", "0.5"), "a100-80gb", "lora")
    slower = as_asked(ok_json("--model", "llama-2-7b", "--method", "lora", "--gpu", "a100-80gb", "--precision",
                              "bf16-mixed", "--mfu", "0.25", "--tokens", "2e8", "--epochs", "1.5"), "a100-80gb", "lora")
    assert base["mfu"] == 0.5
    # 2x the tokens, 1.5 epochs: 3x the steps; half the MFU doubles the compute but not the optimizer's memory time
    parts, slow_parts = base["step_seconds_by_part"], slower["step_seconds_by_part"]
    optimizer = base["communication"]["optimizer_seconds"]
    assert slow_parts["compute"] - optimizer == pytest.approx(2 * (parts["compute"] - optimizer))
    assert slower["hours"] == pytest.approx(base["hours"] / base["step_seconds"] * slower["step_seconds"] * 3)
    assert slower["rent_usd"] / base["rent_usd"] == pytest.approx(slower["hours"] / base["hours"])


def test_csv():
    r = run("plan", "--model", "gpt2", "--gpu", "t4", "--gpu", "l4", "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert CONTRACT - {"step_seconds_by_part"} <= set(rows[0])  # the parts are nested: JSON only
    assert {row["gpu"] for row in rows} == {"t4", "l4"}


def test_gpu_file_adds_and_overrides(tmp_path):
    f = tmp_path / "gpus.json"
    f.write_text(json.dumps([
        {"id": "my-card", "name": "My card", "memory_bytes": 32 * 2**30, "usable_memory_bytes": 31 * 2**30,
         "bf16_flops_per_s": 10**14, "fp16_flops_per_s": 10**14, "fp32_flops_per_s": 2 * 10**13,
         "memory_bandwidth_bytes_per_s": 10**12, "rent_usd_per_hour": 0.5},
        {"id": "a100-80gb", "name": "A100 at my price", "memory_bytes": 80 * 2**30, "usable_memory_bytes": 79 * 2**30,
         "bf16_flops_per_s": 312 * 10**12, "fp16_flops_per_s": 312 * 10**12, "fp32_flops_per_s": 19 * 10**12,
         "memory_bandwidth_bytes_per_s": 2 * 10**12, "rent_usd_per_hour": 1.0, "purchase_usd": 9000}]))
    d = ok_json("--model", "gpt2", "--method", "lora", "--gpu-file", str(f), "--gpu", "my-card", "--gpu", "a100-80gb")
    mine, a100 = as_asked(d, "my-card", "lora"), as_asked(d, "a100-80gb", "lora")
    assert mine["fits"] and mine["purchase_usd"] is None and mine["rent_usd"] > 0
    assert a100["purchase_usd"] == 9000 * 1.25 and a100["purchase_estimated"]  # the GPU + the stated host share
    r = run("gpus", "--gpu-file", str(f))
    assert r.exit_code == 0 and "my-card" in r.output and "A100 at my price" in r.output


def test_nothing_fits_is_an_error_with_the_closest():
    r = run("plan", "--model", "llama-3.1-405b", "--method", "full", "--gpu", "t4", "--max-gpus", "2",
            "--precision", "bf16-mixed")
    assert r.exit_code == 1
    assert "nothing fits" in r.output and "closest" in r.output and "short by" in r.output
    assert isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("args, message", [
    (["--gpu", "h100"], "did you mean h100-80gb, h100-nvl, h100-pcie"),
    (["--gpu", "a100-80"], "a100-80gb"),
    (["--gpu", "nvidia-9000"], "unknown GPU 'nvidia-9000'"),
    (["--tokens", "0"], "--tokens must be a positive"),
    (["--tokens", "-5"], "--tokens must be a positive"),
    (["--tokens", "inf"], "not a number"),
    (["--tokens", "1.5"], "not a whole number"),
    (["--tokens", "lots"], "not a number"),
    (["--epochs", "0"], "--epochs must be a positive"),
    (["--epochs", "-1"], "--epochs must be a positive"),
    (["--epochs", "nan"], "--epochs must be a positive"),
    (["--epochs", "inf"], "--epochs must be a positive"),
    (["--epochs", "three"], "Invalid value for '--epochs'"),
    (["--mfu", "0"], "--mfu must be a fraction in (0, 1]"),
    (["--mfu", "1.5"], "--mfu must be a fraction in (0, 1]"),
    (["--mfu", "-0.3"], "--mfu must be a fraction in (0, 1]"),
    (["--mfu", "nan"], "--mfu must be a fraction in (0, 1]"),
    (["--mfu", "45"], "--mfu must be a fraction in (0, 1]"),
    (["--max-gpus", "0"], "--max-gpus must be a positive"),
    (["--max-gpus", "-3"], "--max-gpus must be a positive"),
    (["--gpus", "16", "--zero", "3"], "--gpus 16 is more than --max-gpus 8"),
    (["--gpus", "0"], "--gpus must be a positive"),
    (["--offload"], "--offload"),
    (["--json", "--csv"], "exclusive"),
    (["--method", "lorax"], "Invalid value for '--method'"),
    (["--gpu-file", "/nonexistent/gpus.json"], "cannot read GPU file"),
])
def test_bad_input(args, message):
    r = run("plan", "--model", "gpt2", *args)
    assert r.exit_code != 0, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)


def test_bad_gpu_file(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"id": "x", "name": "X", "memory_byte": 1}))
    r = run("plan", "--model", "gpt2", "--gpu-file", str(f))
    assert r.exit_code != 0 and "did you mean 'memory_bytes'" in r.output and isinstance(r.exception, SystemExit)


def test_model_must_be_named():
    r = run("plan", "--gpu", "a100-80gb")
    assert r.exit_code != 0 and "exactly one way" in r.output


def test_gpus_command():
    r = run("gpus")
    assert r.exit_code == 0, r.output
    for gid in ("h200", "h100-80gb", "a100-40gb", "rtx-4090", "t4", "mi300x", "m2-ultra-192gb"):
        assert gid in r.output
    assert "Sources" in r.output and "rent:" in r.output and "purchase:" in r.output and "$" in r.output
    d = json.loads(run("gpus", "--json").stdout)
    assert {g["id"] for g in d} == set(gpu_ids())
    # the matmul rate the time model uses: measured (at most a GeForce card's above-boost clocks over the peak) or
    # the stated share of the peak
    for g in d:
        peak = g["bf16_flops_per_s"] or g["fp16_flops_per_s"]
        assert g["source"] and 0.4 * peak < g["matmul_flops_per_s"] < 1.2 * peak, g["id"]
    rows = list(csv.DictReader(io.StringIO(run("gpus", "--csv").stdout)))
    assert len(rows) == len(gpu_ids()) and "rent_usd_per_hour" in rows[0]
    r = run("gpus", "--json", "--csv")
    assert r.exit_code != 0 and "exclusive" in r.output


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_an_example(command):
    cmd = main.get_command(None, command)  # type: ignore[arg-type]
    if cmd is None:
        pytest.skip(f"{command} not written yet")
    assert cmd.help and "Example" in cmd.help and f"peftcalc {command}" in cmd.help


def test_help():
    for command in ("plan", "gpus"):
        r = run(command, "--help")
        assert r.exit_code == 0 and "Example" in r.output
    r = run("plan", "--help")
    for opt in ("--gpu", "--max-gpus", "--tokens", "--epochs", "--mfu", "--gpu-file", "--json", "--csv", "--method",
                "--rank", "--precision", "--zero", "--offload", "--gradient-checkpointing", "--config", "--params"):
        assert opt in r.output, opt


def test_plan_imports_no_heavy_modules():
    code = ("import sys; from click.testing import CliRunner; from peftcalc.cli import main;\n"
            "r = CliRunner().invoke(main, ['plan', '--model', 'gpt2', '--gpu', 'a100-80gb', '--json']);\n"
            "assert r.exit_code == 0, r.output\n"
            "print('HEAVY', [m for m in ('torch', 'numpy', 'pandas', 'matplotlib', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("HEAVY []")


@pytest.mark.slow
def test_assumptions_name_each_methods_activation_path():
    """A hand-written family's methods are replayed (kernels and all); a derived architecture's come from traced
    profiles, the same line the estimate prints, and its time from FLOPs alone, said to be a lower bound. (Slow: the
    planner's batch and length search traces Qwen3-8B's profiles beyond the shipped regime, 10 s.)"""
    from peftcalc.hardware.steptime import NO_KERNELS
    from peftcalc.render.estimate import PROFILED, REPLAYED

    hand = ok_json("--model", "llama-2-7b", "--method", "lora", "--gpu", "a100-80gb")["assumptions"]
    assert hand["activations"] == REPLAYED and NO_KERNELS not in hand["compute"]
    derived = ok_json("--model", "qwen3-8b", "--method", "lora", "--gpu", "a100-80gb")["assumptions"]
    assert derived["activations"] == f"{PROFILED}: lora" and derived["compute"].endswith(f"lora: {NO_KERNELS}")
