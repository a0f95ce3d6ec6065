"""Shared inputs for the report tests: a real estimate, a small plan in the planner's JSON shape, and
measured-result records in the measured backend's JSON-lines shape (issue 3), built here so the tests do
not depend on what bench/results/ holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from peftcalc.estimate import estimate  # noqa: E402
from peftcalc.hardware.catalogue import get_gpu  # noqa: E402
from peftcalc.methods import MethodOptions  # noqa: E402
from peftcalc.model.catalogue import get_model  # noqa: E402
from peftcalc.model.infer import infer_spec  # noqa: E402
from peftcalc.report.frames import PlanRow, PlanView  # noqa: E402
from peftcalc.results.files import Record  # noqa: E402
from peftcalc.setup import Setup  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
METHODS = ("full", "lora", "qlora", "prompt")
GPUS = ("rtx-4090", "a100-80gb", "h100-80gb")


@pytest.fixture(scope="session")
def seed_estimate():
    """The seed document's case: 7e9 parameters, fp32, AdamW, LoRA r=8."""
    return estimate(infer_spec(7_000_000_000), Setup(), ("full", "lora", "qlora", "prompt", "adapter"),
                    MethodOptions(rank=8))


@pytest.fixture(scope="session")
def small_spec():
    return get_model("gpt2")


@pytest.fixture(scope="session")
def gpus():
    return [get_gpu(g) for g in GPUS]


def plan_option(gpu, num_gpus, method, verdict, per_gpu, *, fits_with=(), hours=None, rent=None, kind="as asked",
                strategy="ddp"):
    runs = verdict != "does not fit"
    return PlanRow(gpu, num_gpus, method, verdict, per_gpu, strategy, kind, tuple(fits_with), "weights",
                   4 if runs else None, 4096 if runs else None, hours if runs else None, rent if runs else None,
                   30000 * num_gpus)


@pytest.fixture()
def small_plan():
    """A hand-made plan: every status of the fit matrix appears."""
    o = plan_option
    return PlanView((
        # full: needs more GPUs on the 4090 and the A100 (fewest: 4 with zero-3, 2 with zero-3), fits with offload on H100
        o("rtx-4090", 1, "full", "does not fit", 140 * 10**9),
        o("rtx-4090", 4, "full", "fits", 22 * 10**9, hours=10.0, rent=30.0, kind="fewest GPUs", strategy="zero-3"),
        o("rtx-4090", 8, "full", "fits", 12 * 10**9, hours=5.0, rent=30.0, kind="fewest GPUs", strategy="zero-3"),
        o("a100-80gb", 1, "full", "does not fit", 140 * 10**9),
        o("a100-80gb", 2, "full", "fits", 70 * 10**9, hours=4.0, rent=14.0, kind="fewest GPUs", strategy="zero-3"),
        o("h100-80gb", 1, "full", "fits with", 140 * 10**9, fits_with=["gradient checkpointing", "optimizer offload"],
          hours=3.0, rent=9.0),
        # lora: fits everywhere but the 4090, where nothing runs
        o("rtx-4090", 1, "lora", "does not fit", 33 * 10**9),
        o("a100-80gb", 1, "lora", "fits", 33 * 10**9, hours=6.0, rent=11.0),
        o("h100-80gb", 1, "lora", "fits", 33 * 10**9, hours=2.0, rent=6.0),
        # qlora: fits everywhere; no rent price on the 4090
        o("rtx-4090", 1, "qlora", "fits", 12 * 10**9, hours=20.0, rent=None),
        o("a100-80gb", 1, "qlora", "fits", 12 * 10**9, hours=8.0, rent=15.0),
        o("h100-80gb", 1, "qlora", "fits", 12 * 10**9, hours=3.0, rent=9.0),
    ), {"training": "100,000,000 tokens x 1 epoch", "MFU": "assumed 40 %"})


def result_record(model, family, method, layer, measured_peak, predicted_peak, *, status="ok", seq=512,
                  checkpointing=False):
    backend, device = {"traced": ("trace", "cpu"), "cpu": ("run", "cpu"), "gpu": ("run", "cuda")}[layer]
    comp = lambda peak: {"weights": peak // 2, "gradients": peak // 8, "optimizer_states": peak // 4,  # noqa: E731
                         "activations": peak // 8, "peak": peak}
    return {
        "backend": backend, "device": device, "status": status,
        "model": {"name": model, "family": family, "total_params": 124_439_808},
        "setup": {"precision": "fp32", "optimizer": "adamw", "batch_size": 1, "seq_len": seq,
                  "gradient_checkpointing": checkpointing, "attention": "sdpa", "num_gpus": 1, "zero_stage": 0,
                  "offload": False, "adamw_impl": "foreach"},
        "method": method, "trainable_params": 1000,
        "measured_bytes": comp(measured_peak) if status == "ok" else None,
        "predicted_bytes": comp(predicted_peak),
        "peak_phase": "optimizer" if method == "full" else "backward",
        "checkpoint_bytes": 4000, "step_seconds": 1.5 if status == "ok" else None, "tokens_per_second": None,
        "per_rank": [],
        "environment": {"torch": "2.13.0", "transformers": "5.0", "peft": "0.21", "device_name": "cpu",
                        "git_commit": "abc123"},
    }


@pytest.fixture()
def record_dicts():
    """Twelve results as JSON lines hold them: three layers of truth, four methods, three families, one OOM and
    one error."""
    r = result_record
    return [
        r("gpt2-tiny", "gpt2", "full", "traced", 2_000_000_000, 2_010_000_000),          # +0.5 %
        r("gpt2-tiny", "gpt2", "lora", "traced", 1_000_000_000, 950_000_000),             # -5 %
        r("gpt2-tiny", "gpt2", "full", "cpu", 2_000_000_000, 2_010_000_000),             # +0.5 %
        r("llama-tiny", "llama", "lora", "cpu", 400_000_000, 440_000_000),          # +10 %
        r("llama-tiny", "llama", "prompt", "traced", 300_000_000, 297_000_000),     # -1 %
        r("llama-tiny", "llama", "qlora", "gpu", 8_000_000_000, 8_800_000_000),      # +10 %
        r("qwen-tiny", "qwen2", "full", "gpu", 16_000_000_000, 12_000_000_000),     # -25 %
        r("qwen-tiny", "qwen2", "lora", "traced", 5_000_000_000, 5_000_000_000),     # 0 %
        r("qwen-tiny", "qwen2", "prompt", "cpu", 3_000_000_000, 3_030_000_000, seq=2048, checkpointing=True),  # +1 %
        r("qwen-tiny", "qwen2", "qlora", "traced", 6_000_000_000, 6_120_000_000),    # +2 %
        r("llama-tiny", "llama", "full", "gpu", 0, 90_000_000_000, status="oom"),
        r("gpt2-tiny", "gpt2", "prompt", "cpu", 0, 1_000_000, status="error"),
    ]


@pytest.fixture()
def records(record_dicts):
    return [Record.from_dict(d, f"r.jsonl:{i}") for i, d in enumerate(record_dicts, 1)]


@pytest.fixture()
def results_dir(tmp_path, record_dicts):
    d = tmp_path / "results"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in record_dicts[:6]))
    (d / "b.jsonl").write_text("".join(json.dumps(x) + "\n" for x in record_dicts[6:]))
    return d
