"""`peftcalc validate --throughput`: published records mapped to the runs their sources' configs describe (or refused
with the reason), predicted with the kernel time model, compared in the metric the source printed; the summary the
README quotes."""

from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.errors import PeftcalcError
from peftcalc.throughput import compare, load_records, predict, summarize
from peftcalc.throughput_mapping import case_of

RECORDS = {r["id"]: r for r in load_records()}
TITAN = "torchtitan/llama3-h100-202412/8b-8gpu-fsdp"
MMQA = "peft-metamathqa/lora-rank32/step-time"


def test_every_committed_record_is_read():
    assert len(RECORDS) == 65


def test_a_record_becomes_its_setup():
    c = case_of(RECORDS[TITAN])
    s = c.setup
    assert (s.num_gpus, s.zero_stage, s.batch_size, s.seq_len, s.precision) == (8, 3, 2, 8192, "bf16-mixed")
    # the file's hosts: '96GB HBM2e with 2.4 TB/sec', 'default 500W power limit'; op-level SAC's recomputed mms
    assert c.gpu.memory_bandwidth_bytes_per_s == 2_400_000_000_000 and c.power_watts == 500
    assert c.recomputed == ("k_proj", "o_proj", "up_proj")


def test_metamathqa_records_are_the_steps_time():
    """The result files' train_time runs from before the wiki loss and dataset preparation to after the test-set
    generation; the step durations run.py records (20 x 250 steps) are the training steps' time."""
    r = RECORDS[MMQA]
    assert r["metric"] == "train_step_seconds_total"
    assert r["value"] == pytest.approx(sum(r["source"]["quoted_values"])) and len(r["source"]["quoted_values"]) == 20
    assert r["value"] < 942  # the file's train_time, which included the test-set generation
    c = case_of(r)
    assert c.steps == 5000 and c.setup.seq_len == round(4198051 / 20000) and c.setup.padded
    assert (c.options.rank, c.options.targets) == (32, ("q_proj", "v_proj"))  # the adapter config, not defaults
    prompt = case_of(RECORDS["peft-metamathqa/prompt_tuning-default/step-time"])
    assert prompt.options.virtual_tokens == 200


def test_torchtune_rows_follow_the_configs_at_the_commit():
    lora = case_of(RECORDS["torchtune/readme-llama31/8B-lora-1x4090"])
    s = lora.setup
    assert (s.gradient_checkpointing, s.packing, s.loss, s.compile, s.adamw_impl, s.precision, s.grad_clipping) == (
        True, True, "chunked", True, "fused", "bf16-true", False)
    assert (lora.options.rank, lora.options.targets) == (8, ("q_proj", "v_proj"))
    ckpt = case_of(RECORDS["torchtune/readme-optflags-llama32-3b/act-ckpt"]).setup
    assert ckpt.gradient_checkpointing and ckpt.compile and ckpt.loss == "chunked" and ckpt.packing
    packed = case_of(RECORDS["torchtune/readme-optflags-llama32-3b/packed"]).setup
    assert not packed.gradient_checkpointing and not packed.compile and packed.loss == "standard"
    assert case_of(RECORDS["torchtune/readme-optflags-llama32-3b/adamw8bit"]).setup.optimizer == "adamw-8bit"
    assert case_of(RECORDS["torchtune/readme-optflags-llama32-3b/qlora"]).options.rank == 64


@pytest.mark.parametrize("record, reason", [
    ("torchtitan/llama3-h100-202412/8b-8gpu-fsdp-torchcompile-float8", "float8"),
    ("torchtitan/asynctp-h100-202506/8b-64gpu-bf16-vanilla-tp", "sequence length not stated"),
    ("peft-metamathqa/loha-rank32/step-time", "'loha' is not modelled"),
    ("megatron-lm/readme-h100-strong-scaling/gpt3-175b-96gpu", "mfu_percent"),
    ("litgpt/resource-tables-2023-10/lora-1gpu-llama2-7b-mb1", "tokens of the run not stated"),
    ("torchtune/readme-optflags-llama32-3b/baseline", "padded to the longest"),
])
def test_what_cannot_be_modelled_says_why(record, reason):
    with pytest.raises(PeftcalcError, match=reason):
        case_of(RECORDS[record])


def test_a_rate_no_such_gpu_reaches_is_refused():
    """torchtune's A6000 LoRA row at 4,699 tokens/s with the config's checkpointing: forward, recomputation and
    input gradients of 8B (3 x 2 x 7.0e9 FLOPs per token for the blocks, 4 x 5.3e8 for the head) plus attention is
    over 4.6e10 FLOPs per token, 2.2e14 FLOP/s: above the A6000's measured 1.23e14 matmul rate."""
    r = RECORDS["torchtune/readme-llama31/8B-lora-1xA6000"]
    assert (3 * 2 * 6.98e9 + 4 * 5.25e8) * r["value"] > 123.34e12
    c = compare(r)
    assert c.predicted is None and "measured matmul rate" in c.excluded
    paged = compare(RECORDS["torchtune/readme-llama31/8B-full-1x4090"])
    assert "paging them over PCIe" in paged.excluded  # 16 GB of bf16 weights + 16 GB of 8-bit states > 24 GB


def test_lora_on_one_gpu_is_its_matmuls_at_the_measured_rate():
    """The 4090 LoRA row: most of the step is the matmuls of forward, recomputation and input gradients (6 x the
    block weights per token, 4 x the head) at the 4090's measured 166.6 TFLOP/s, so tokens/s sits a little below
    that bound (attention, memory-bound work and the adapters cost the rest)."""
    case = case_of(RECORDS["torchtune/readme-llama31/8B-lora-1x4090"])
    per_token = 6 * 6.98e9 + 4 * 5.25e8
    bound = 166.58e12 / per_token
    predicted, step = predict(case)
    assert 0.8 * bound < predicted < bound
    assert step.compute_parts["matmul"] > 0.8 * step.compute_seconds


def test_summary_over_enough_points_reaches_the_target():
    comparisons = [compare(r) for r in RECORDS.values()]
    s = summarize(comparisons)
    assert s.points >= 15 and s.points + s.excluded == 65
    errors = [abs(c.error_percent) for c in comparisons if c.error_percent is not None]
    assert s.median_abs_percent == pytest.approx(statistics.median(errors))
    assert abs(s.worst[0].error_percent) == max(errors)
    assert s.median_abs_percent <= 25  # issue 13's Done-when, with nothing fitted to these records
    assert len(s.by_source) == 3


def test_cli_json_and_exit_status(tmp_path):
    r = CliRunner().invoke(main, ["validate", "--throughput", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["summary"]["points"] >= 15 and d["summary"]["reached"] is True
    median = d["summary"]["median_abs_percent"]
    assert isinstance(median, float) and 0 < median <= 25
    assert all(x["mfu"] is None or 0 < x["mfu"] < 1.5 for x in d["records"])
    strict = CliRunner().invoke(main, ["validate", "--throughput", "--target", str(median / 2)])
    assert strict.exit_code == 1 and "NOT reached" in strict.output  # the target is a real gate
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({k: v for k, v in RECORDS[TITAN].items() if k != "_file"}) + "\n")
    r = CliRunner().invoke(main, ["validate", "--throughput", str(one), "--json", "--target", "100"])
    assert r.exit_code == 0 and json.loads(r.stdout)["summary"]["points"] == 1


def test_leave_one_source_out_factor_is_fitted_on_the_others_only():
    """Predicted times 0.8 and 0.5 of the published ones: source a's factor comes from b's records alone (1 / 0.5)
    and over-corrects a (0.8 x 2 - 1 = +60 %)."""
    from peftcalc.throughput import Comparison, held_out_by_source

    def c(source, error):
        return Comparison(f"{source}/{error}", source, "train_step_seconds_total", 1.0, 1 + error / 100, error, None)

    out = held_out_by_source([c("a", -20.0), c("a", -20.0), c("b", -50.0)])
    assert out["a"] == (pytest.approx(2.0), pytest.approx(60.0))
    assert out["b"] == (pytest.approx(1.25), pytest.approx(37.5))  # 0.5 x 1.25 - 1 = -37.5 %
