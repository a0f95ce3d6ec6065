"""`peftcalc check`: exit 0 when it fits with the margin, 1 when it does not (with the change that makes it fit),
2 on bad input; one line each for the verdict, the peak and the largest part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.estimate import estimate_method
from peftcalc.hardware.catalogue import get_gpu
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup

DATA = Path(__file__).resolve().parents[1] / "data" / "configs"
QLORA = str(DATA / "axolotl" / "llama3-8b-qlora.yml")
FULL = str(DATA / "axolotl" / "llama3.1-8b-fft.yaml")


def run(*args: str):
    return CliRunner().invoke(main, list(args))  # output: stdout and stderr (click 8.2)


def qlora_peak() -> int:
    """The file's setup, by hand: the peak `check` compares (tensor peak + overhead lines)."""
    setup = Setup(precision="bf16", optimizer="adamw", adamw_impl="fused", batch_size=2, seq_len=4096,
                  gradient_accumulation=4, gradient_checkpointing=True)
    method = make_method("qlora", MethodOptions(rank=32, targets=("all-linear",)))
    return estimate_method(get_model("llama-3-8b"), method, setup).memory.total


def test_fits_exit_0():
    r = run("check", QLORA, "--gpu", "a100-80gb")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("FITS  ") and QLORA in lines[0] and "qlora on llama-3-8b" in lines[0]
    assert lines[1].startswith("  peak: ") and lines[2].startswith("  largest part: ") and len(lines) == 3
    assert f"{qlora_peak() / 1e9:,.2f} GB" in lines[0]


def test_does_not_fit_exit_1_with_the_change():
    r = run("check", QLORA, "--gpu", "rtx-4090")
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("DOES NOT FIT  ") and lines[3].startswith("  to fit: --batch 1")
    usable = get_gpu("rtx-4090").usable_memory_bytes
    assert qlora_peak() > usable * 0.9  # independent of check: the margin is what fails it
    assert run("check", QLORA, "--gpu", "rtx-4090", "--margin", "0%").exit_code == (0 if qlora_peak() <= usable else 1)


def test_the_margin_decides():
    peak, usable = qlora_peak(), get_gpu("a100-80gb").usable_memory_bytes
    keep = (usable - peak) / usable * 100  # the share left free at this peak
    assert run("check", QLORA, "--gpu", "a100-80gb", "--margin", f"{keep - 1:.1f}%").exit_code == 0
    assert run("check", QLORA, "--gpu", "a100-80gb", "--margin", f"{keep + 1:.1f}%").exit_code == 1
    spare_gb = (usable - peak) / 1e9
    assert run("check", QLORA, "--gpu", "a100-80gb", "--margin", f"{spare_gb - 0.5:.2f}GB").exit_code == 0
    assert run("check", QLORA, "--gpu", "a100-80gb", "--margin", f"{spare_gb + 0.5:.2f}GB").exit_code == 1


def test_more_gpus_as_the_change():
    r = run("check", FULL, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--batch", "16")
    assert r.exit_code == 1 and "to fit:" in r.output, r.output


@pytest.mark.parametrize("args,words", [
    (("/nonexistent.yml", "--gpu", "a100-80gb"), "no such file"),
    ((QLORA, "--gpu", "no-such-gpu"), "unknown GPU"),
    ((QLORA, "--gpu", "a100-80gb", "--margin", "lots"), "--margin"),
    ((QLORA, "--gpu", "a100-80gb", "--margin", "100%"), "below 100"),
    ((str(DATA / "trl" / "accelerate-fsdp2.yaml"), "--gpu", "a100-80gb"), "no model named"),
    ((str(DATA / "peft" / "loha-r32-llama3.2-3B.adapter_config.json"), "--gpu", "a100-80gb", "--model", "gpt2"),
     "LOHA"),
])
def test_bad_input_exit_2(args, words):
    r = run("check", *args)
    assert r.exit_code == 2, r.output
    assert words in r.output and r.stderr.count("\n") == 1, r.output  # one line, on stderr
    assert "Traceback" not in r.output


def test_bad_usage_exit_2():
    assert run("check", "--gpu", "a100-80gb").exit_code == 2  # no FILE
    assert run("check", QLORA).exit_code == 2  # no --gpu


def test_several_files_the_worst_status_wins(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("base_model: [\n")
    assert run("check", QLORA, FULL, "--model", "llama-3.1-8b", "--gpu", "rtx-4090").exit_code == 1
    r = run("check", QLORA, str(bad), "--gpu", "a100-80gb")
    assert r.exit_code == 2 and "FITS" in r.output


def test_json_and_launchers():
    r = run("check", str(DATA / "trl" / "alignment-handbook-zephyr-7b-sft-full.yaml"), "--launcher",
            str(DATA / "trl" / "accelerate-deepspeed-zero3.yaml"), "--gpu", "h100-80gb", "--json")
    d = json.loads(r.stdout)
    assert d[0]["num_gpus"] == 8 and d[0]["model"] == "mistral-7b"
    assert r.exit_code == (0 if d[0]["status"] == "fits" else 1)
    assert set(d[0]) >= {"peak_bytes", "budget_bytes", "largest_part", "change", "status"}


def test_flags_override_the_file():
    r = run("check", QLORA, "--gpu", "rtx-4090", "--batch", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.output)[0]["status"] == "fits"
