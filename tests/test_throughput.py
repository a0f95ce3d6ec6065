"""`peftcalc validate --throughput`: published records mapped to setups (or refused with the reason), predicted with the
step-time model, compared in the metric the source printed; the summary the README quotes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.errors import PeftcalcError
from peftcalc.throughput import case_of, compare, implied_utilisation, load_records, predict, summarize

RECORDS = {r["id"]: r for r in load_records()}
TITAN = "torchtitan/llama3-h100-202412/8b-8gpu-fsdp"


def test_every_committed_record_is_read():
    assert len(RECORDS) == 65


def test_a_record_becomes_its_setup():
    c = case_of(RECORDS[TITAN])
    s = c.setup
    assert (s.num_gpus, s.zero_stage, s.batch_size, s.seq_len, s.precision) == (8, 3, 2, 8192, "bf16-mixed")
    assert c.gpu.id == "h100-80gb" and "500 W" in " ".join(c.assumptions)


@pytest.mark.parametrize("record, reason", [
    ("torchtitan/llama3-h100-202412/8b-8gpu-fsdp-torchcompile-float8", "float8"),
    ("torchtitan/asynctp-h100-202506/8b-64gpu-bf16-vanilla-tp", "sequence length not stated"),
    ("peft-metamathqa/loha-rank32/train-time", "'loha' is not modelled"),
    ("megatron-lm/readme-h100-strong-scaling/gpt3-175b-96gpu", "mfu_percent"),
    ("litgpt/resource-tables-2023-10/lora-1gpu-llama2-7b-mb1", "tokens of the run not stated"),
])
def test_what_cannot_be_modelled_says_why(record, reason):
    with pytest.raises(PeftcalcError, match=reason):
        case_of(RECORDS[record])


def test_a_per_gpu_rate_above_the_peak_is_refused():
    """torchtune's 8 x A100 rows read as per-GPU would need more than the A100's dense peak: 6N per token
    (Kaplan et al. 2020) x 1,568 tokens/s for 70B is 6.6e14 FLOP/s, above 3.12e14."""
    r = RECORDS["torchtune/readme-llama31/70B-full-8xA100"]
    case = case_of(r)
    assert 6 * 70e9 * 1568 / 312e12 > 2  # the paper count alone
    assert implied_utilisation(case, r["value"]) > 2
    assert "implies" in compare(r).excluded


def test_one_gpu_prediction_is_flops_over_peak_times_mfu_plus_the_optimizer():
    """A single-GPU record: tokens/s = batch x seq / (FLOPs of the batch / (peak x MFU) + the optimizer's memory
    traffic / bandwidth); with LoRA the optimizer is negligible, so the PaLM count alone nearly gives it."""
    r = RECORDS["torchtune/readme-llama31/8B-lora-1x4090"]
    case = case_of(r)
    n = case.spec.total_params
    per_token = 4 * n  # frozen base: forward 2N + input gradients 2N; attention and adapters add a few %
    bound = 165.2e12 * 0.35 / per_token
    assert 0.85 * bound < predict(case) < bound


def test_summary_over_enough_points():
    comparisons = [compare(r) for r in RECORDS.values()]
    s = summarize(comparisons)
    assert s.points >= 15 and s.points + s.excluded == 65
    errors = sorted(abs(c.error_percent) for c in comparisons if c.error_percent is not None)
    assert s.median_abs_percent == pytest.approx((errors[len(errors) // 2 - 1] + errors[len(errors) // 2]) / 2
                                                 if len(errors) % 2 == 0 else errors[len(errors) // 2])
    assert abs(s.worst[0].error_percent) == errors[-1]


def test_cli_json_and_exit_status(tmp_path):
    r = CliRunner().invoke(main, ["validate", "--throughput", "--json", "--target", "100"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["summary"]["points"] >= 15 and d["summary"]["reached"] is True
    median = d["summary"]["median_abs_percent"]
    assert isinstance(median, float) and median > 0
    strict = CliRunner().invoke(main, ["validate", "--throughput", "--target", str(median / 2)])
    assert strict.exit_code == 1 and "NOT reached" in strict.output  # the target is a real gate
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({k: v for k, v in RECORDS[TITAN].items() if k != "_file"}) + "\n")
    r = CliRunner().invoke(main, ["validate", "--throughput", str(one), "--json", "--target", "100"])
    assert r.exit_code == 0 and json.loads(r.stdout)["summary"]["points"] == 1
