"""frames.py: each table built from a real estimate, a hand-made plan or hand-made results."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from peftcalc.methods import MethodOptions
from peftcalc.report import frames as fr
from peftcalc.results.files import Record
from peftcalc.setup import Setup

GB = 10**9


# ---- the analytic estimate ------------------------------------------------------------------------------

def test_comparison_reproduces_the_seed_table(seed_estimate):
    df = fr.comparison_frame(seed_estimate).set_index("method")
    assert list(df.index) == ["full", "lora", "qlora", "prompt", "adapter"]
    # the seed: 7B x (4 + 4 + 8) bytes = 112 GB of model states; 10 full copies = 280 GB (plus file headers)
    assert df.loc["full", "model_states_bytes"] == pytest.approx(112 * GB, rel=1e-6)
    assert df.loc["full", "trainable_percent"] == 100.0
    assert 280 * GB <= df.loc["lora", "full_copies_bytes"] < 280.01 * GB
    # LoRA r=8 on q,v of 32 layers of 4096x4096: 32 * 2 * 8 * (4096 + 4096)
    assert df.loc["lora", "trainable_params"] == 32 * 2 * 8 * 8192
    assert df.loc["lora", "trainable_percent"] < 0.1
    assert df.loc["lora", "tasks_bytes"] == 10 * df.loc["lora", "checkpoint_bytes"]
    assert (df["peak_bytes"] >= df["model_states_bytes"]).all()


def test_breakdown_parts_sum_to_the_estimates_total(seed_estimate):
    df = fr.breakdown_frame(seed_estimate)
    parts = [c for _, c in fr.COMPONENTS]
    assert (df[parts].sum(axis=1) == df["total_bytes"]).all()
    for r in seed_estimate.results:
        row = df[df["method"] == r.method].iloc[0]
        assert row["total_bytes"] == r.memory.total
        assert row["optimizer_states_bytes"] == r.memory.optimizer_state_bytes
    full = df[df["method"] == "full"].iloc[0]
    # foreach AdamW: a copy of 7B fp32 weights at the optimizer step, above every activation
    assert full["peak_phase"] == "optimizer"
    assert full["gradients_bytes"] == seed_estimate.result("full").memory.gradient_bytes
    assert full["activations_and_temporaries_bytes"] >= 28 * GB


@pytest.mark.parametrize("field,values", [("seq_len", (128, 256, 512, 1024)), ("batch_size", (1, 2, 4, 8))])
def test_sweeps_are_long_and_monotonic(small_spec, field, values):
    df = fr.sweep_frame(small_spec, Setup(), ("full", "lora", "prompt"), MethodOptions(), field, values)
    assert list(df.columns) == ["method", field, "peak_bytes", "activations_bytes"]
    assert len(df) == 3 * len(values)
    for _, g in df.groupby("method"):
        assert list(g[field]) == list(values)
        assert g["peak_bytes"].is_monotonic_increasing
        assert g["activations_bytes"].is_monotonic_increasing and g["activations_bytes"].iloc[-1] > g["activations_bytes"].iloc[0]


def test_sweep_rejects_other_fields(small_spec):
    with pytest.raises(ValueError):
        fr.sweep_frame(small_spec, Setup(), ("lora",), MethodOptions(), "num_gpus", (1, 2))


def test_capacity_sorted_smallest_first(gpus):
    df = fr.capacity_frame(reversed(gpus))
    assert df["usable_memory_bytes"].is_monotonic_increasing
    assert list(df["gpu"])[0] == "rtx-4090"
    assert (df["usable_memory_bytes"] <= df["memory_bytes"]).all()


def test_lora_parameters_and_checkpoint_are_linear_in_rank(small_spec):
    df = fr.rank_frame(small_spec, Setup(), MethodOptions(), ranks=(1, 2, 4, 8), methods=("lora", "dora"))
    lora = df[df["method"] == "lora"].set_index("rank")
    assert list(lora["trainable_params"]) == [lora.loc[1, "trainable_params"] * r for r in (1, 2, 4, 8)]
    assert lora["checkpoint_bytes"].is_monotonic_increasing
    dora = df[df["method"] == "dora"].set_index("rank")
    assert (dora["trainable_params"] > lora["trainable_params"]).all()  # + the magnitude vectors


def test_storage_adapters_share_one_base(seed_estimate):
    df = fr.storage_frame(seed_estimate, task_counts=(1, 10, 100))
    full = df[df["method"] == "full"].set_index("num_tasks")
    assert (full["total_bytes"] == full["full_copies_bytes"]).all()
    lora = df[df["method"] == "lora"].set_index("num_tasks")
    base = full.loc[1, "full_copies_bytes"]
    assert (lora["total_bytes"] == lora["adapters_bytes"] + base).all()
    assert lora.loc[10, "adapters_bytes"] == 10 * lora.loc[1, "checkpoint_bytes"]
    assert lora.loc[10, "total_bytes"] < full.loc[10, "total_bytes"] / 5


# ---- the planner -----------------------------------------------------------------------------------------

def test_plan_frame_keeps_the_contract(small_plan):
    df = fr.plan_frame(small_plan.rows)
    assert list(df.columns) == list(fr.PLAN_COLUMNS)
    assert len(df) == len(small_plan.rows)
    h100_full = df[(df["gpu"] == "h100-80gb") & (df["method"] == "full")].iloc[0]
    assert not h100_full["fits"] and h100_full["runs"]
    assert h100_full["fits_with"] == "gradient checkpointing+optimizer offload"


def test_plan_view_of_a_real_plan_keeps_every_option(small_spec, gpus):
    """The report's rows are the planner's options, one for one, with the planner's own numbers."""
    from peftcalc.hardware.planner import PlanRequest, plan

    p = plan(PlanRequest(spec=small_spec, setup=Setup(precision="bf16-mixed"), gpus=tuple(gpus),
                         methods=("full", "lora"), max_gpus=2))
    view = fr.PlanView.of(p)
    df = fr.plan_frame(view.rows)
    assert len(df) == len(p.options) and "compute" in view.assumptions
    for o, (_, row) in zip(p.options, df.iterrows()):
        assert (row["gpu"], row["method"], row["num_gpus"], row["per_gpu_bytes"]) == \
            (o.gpu.id, o.method, o.num_gpus, o.memory.total)
        assert row["fits"] == o.fits and row["runs"] == o.runs


def test_fit_frame_statuses(small_plan, gpus):
    fit = fr.fit_frame(fr.plan_frame(small_plan.rows), gpus, ("full", "lora", "qlora"))
    assert len(fit) == 9
    cell = fit.set_index(["method", "gpu"])
    assert cell.loc[("full", "rtx-4090"), "status"] == "needs more GPUs"
    assert cell.loc[("full", "rtx-4090"), "min_gpus"] == 4
    assert cell.loc[("full", "rtx-4090"), "min_gpus_strategy"] == "zero-3"
    assert cell.loc[("full", "a100-80gb"), "min_gpus"] == 2
    assert cell.loc[("full", "h100-80gb"), "status"] == "fits with changes"
    assert cell.loc[("full", "h100-80gb"), "min_gpus"] == 1
    assert cell.loc[("lora", "rtx-4090"), "status"] == "does not fit"
    assert pd.isna(cell.loc[("lora", "rtx-4090"), "min_gpus"])
    assert cell.loc[("qlora", "rtx-4090"), "status"] == "fits"
    assert cell.loc[("qlora", "rtx-4090"), "per_gpu_bytes"] == 12 * GB
    assert set(fit["status"]) <= set(fr.FIT_STATUSES)


def test_cost_frame_takes_the_fewest_gpus_that_run(small_plan):
    cost = fr.cost_frame(fr.plan_frame(small_plan.rows), ("full", "lora", "qlora"))
    full = cost[cost["method"] == "full"].set_index("gpu")
    assert full.loc["rtx-4090", "num_gpus"] == 4 and full.loc["rtx-4090", "hours"] == 10.0
    assert full.loc["h100-80gb", "verdict"] == "fits with"
    assert "rtx-4090" not in set(cost[cost["method"] == "lora"]["gpu"])  # nothing runs there
    assert list(dict.fromkeys(cost["method"])) == ["full", "lora", "qlora"]
    lora = cost[cost["method"] == "lora"]
    assert lora["rent_usd"].is_monotonic_increasing
    qlora = cost[cost["method"] == "qlora"]
    assert qlora["gpu"].iloc[-1] == "rtx-4090"  # no rent price: last


# ---- measured results ------------------------------------------------------------------------------------

def test_results_frame(records):
    df = fr.results_frame(records)
    assert list(df.columns) == fr.RESULT_COLUMNS
    assert list(df["layer"][:3]) == ["traced", "traced", "measured CPU"]
    assert df.loc[5, "layer"] == "measured GPU"
    assert df.loc[1, "peak_error_bytes"] == -50_000_000
    assert df.loc[1, "peak_error_percent"] == -5.0
    assert df.loc[6, "peak_error_percent"] == -25.0
    assert pd.isna(df.loc[10, "peak_error_percent"])  # OOM: nothing measured
    assert df.loc[8, "setup"] == "fp32 b1xs2048 ckpt foreach"
    # nothing from the machine that ran them: the compared tables must regenerate identically anywhere
    assert not any("environment" in c or "torch" in c or "commit" in c for c in df.columns)


def test_compared_and_status(records):
    df = fr.results_frame(records)
    assert len(fr.compared_frame(df)) == 10
    status = fr.status_frame(df)
    assert status["runs"].sum() == 12
    gpu = status[status["layer"] == "measured GPU"].set_index("status")["runs"]
    assert gpu.to_dict() == {"ok": 2, "oom": 1}


def test_error_summaries(records):
    df = fr.results_frame(records)
    by_method = fr.error_summary_frame(df, "method").set_index("method")
    assert by_method.loc["full", "runs"] == 3
    assert by_method.loc["full", "max_abs_error_percent"] == 25.0
    assert by_method.loc["full", "mean_error_percent"] == pytest.approx((0.5 + 0.5 - 25) / 3, abs=1e-4)
    by_family = fr.error_summary_frame(df, "family").set_index("family")
    assert set(by_family.index) == {"gpt2", "llama", "qwen2"}
    comp = fr.component_error_frame(df).set_index("component")
    assert list(comp.index) == list(fr.RESULT_COMPONENTS)
    assert comp.loc["peak", "max_abs_error_percent"] == 25.0


def test_worst_runs_first(records):
    worst = fr.worst_runs_frame(fr.results_frame(records), n=3)
    assert list(worst["peak_error_percent"]) == [-25.0, 10.0, 10.0]
    assert list(worst["model"]) == ["qwen-tiny", "llama-tiny", "llama-tiny"]


def test_describe_setup_names_what_a_figure_assumes(seed_estimate):
    text = fr.describe_setup(seed_estimate.spec, seed_estimate.setup, MethodOptions(rank=8))
    for part in ("7.00B params", "fp32", "adamw", "batch 1 x seq 512", "LoRA r=8", "1 GPU"):
        assert part in text
    assert "seq varies" in fr.describe_setup(seed_estimate.spec, seed_estimate.setup, vary="seq_len")


def test_frames_write_stable_csv(seed_estimate):
    """The same estimate gives the same CSV bytes (what the up-to-date test compares)."""
    a = fr.comparison_frame(seed_estimate).to_csv(index=False)
    b = fr.comparison_frame(seed_estimate).to_csv(index=False)
    assert a == b and json.dumps(a)


def test_a_failed_bench_line_is_read_from_its_run(records):
    """The bench runner records a run that failed before measuring with only its suite `run` and the error."""
    failed = {"backend": "trace", "status": "error", "suite": "cpu-small",
              "detail": {"error": "Traceback ...\nNotImplementedError: no step simulation for family 't5'"},
              "run": {"model": "t5-large", "method": "lora", "precision": "bf16", "batch": 2, "seq": 1024,
                      "gradient_checkpointing": True, "adamw_impl": "foreach", "nproc": 1, "zero": 0}}
    df = fr.results_frame([Record.from_dict(failed)])
    row = df.iloc[0]
    assert (row["model"], row["family"], row["method"], row["suite"]) == ("t5-large", "t5", "lora", "cpu-small")
    assert (row["batch_size"], row["seq_len"], row["setup"]) == (2, 1024, "bf16 b2xs1024 ckpt foreach")
    fails = fr.failures_frame([*records, Record.from_dict(failed),
                               Record.from_dict(dict(failed, run={**failed["run"], "method": "full"}))])
    t5 = fails[fails["message"].str.contains("t5")].iloc[0]
    assert (t5["runs"], t5["methods"], t5["models"]) == (2, "full, lora", "t5-large")
    assert t5["message"] == "NotImplementedError: no step simulation for family 't5'"  # the last line only
    assert set(fails["status"]) == {"oom", "error"}
    assert fails["runs"].sum() == 4


def test_predictions_are_recomputed_with_todays_model():
    """A catalogue model's run is predicted again by the current code; the recorded prediction stays beside."""
    import dataclasses

    from peftcalc.estimate import estimate_method
    from peftcalc.methods import make_method
    from peftcalc.model.catalogue import get_model

    setup = Setup(precision="bf16", seq_len=128)
    rec = {"backend": "trace", "device": "cpu (fake tensors)", "status": "ok",
           "model": {"name": "gpt2", "family": "gpt2"}, "setup": dataclasses.asdict(setup), "method": "lora",
           "run": {"model": "gpt2", "method": "lora", "rank": 4, "targets": None, "seq": 128},
           "measured_bytes": {"weights": 1, "gradients": 1, "optimizer_states": 1, "activations": 1,
                              "peak": 400_000_000},
           "predicted_bytes": {"weights": 1, "gradients": 1, "optimizer_states": 1, "activations": 1,
                               "peak": 300_000_000}}
    m = estimate_method(get_model("gpt2"), make_method("lora", MethodOptions(rank=4)), setup, device="cpu").memory
    rec = Record.from_dict(rec)
    row = fr.results_frame([rec]).iloc[0]
    assert row["prediction"] == "current"
    assert row["predicted_peak_bytes"] == m.peak_bytes
    assert row["predicted_weights_bytes"] == m.weight_bytes + m.buffer_bytes + m.master_weight_bytes
    assert row["recorded_predicted_peak_bytes"] == 300_000_000 and row["recorded_peak_error_percent"] == -25.0
    old = fr.results_frame([rec], repredict_runs=False).iloc[0]
    assert old["prediction"] == "recorded" and old["predicted_peak_bytes"] == 300_000_000
    history = fr.prediction_history_frame(fr.results_frame([rec])).set_index("prediction")
    assert history.loc["recorded with the results", "max_abs_error_percent"] == 25.0
    assert history.loc["current analytic model", "runs"] == 1


def test_a_model_outside_the_catalogue_keeps_its_recorded_prediction(records):
    df = fr.results_frame(records)
    assert set(df.loc[df["status"] == "ok", "prediction"]) == {"recorded"}
