"""The tracer is honest: the same step on fake tensors and on real CPU tensors gives the same bytes, to the byte,
in every category and at every phase's peak. Also: measure()'s contract and its refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peftcalc.errors import PeftcalcError
from peftcalc.measure.api import measure
from peftcalc.measure.meter import LiveMeter
from peftcalc.results.record import BYTE_KEYS
from peftcalc.measure.adapted import build_adapted
from peftcalc.measure.step import measured_step, prepare_training
from peftcalc.measure.trace import trace_step
from peftcalc.methods import MethodOptions, make_method
from peftcalc.setup import Setup

from .tiny_models import tiny

SETUP = dict(batch_size=2, seq_len=32)


def _numbers(n) -> dict:
    d = dataclasses.asdict(n)
    d.pop("step_seconds")
    return d


def trace_and_run(family: str, method: str, warmup: str = "step", **setup_kw):
    spec = tiny(family)
    setup = Setup(**{**SETUP, **setup_kw})
    traced, _, _, traced_ckpt = trace_step(spec, make_method(method), setup)
    torch.manual_seed(0)
    model, _, notes = build_adapted(spec, make_method(method), setup, device="cpu")
    prep = prepare_training(model, spec, setup, "cpu", notes)
    ran = measured_step(prep, LiveMeter(), warmup=warmup)
    return _numbers(traced), _numbers(ran), traced_ckpt, prep


@pytest.mark.parametrize("impl", [pytest.param("forloop", marks=pytest.mark.slow), "foreach",
                                  pytest.param("fused", marks=pytest.mark.slow)])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_trace_equals_run_to_the_byte(method, checkpointing, impl):
    traced, ran, _, _ = trace_and_run("llama", method, adamw_impl=impl, gradient_checkpointing=checkpointing)
    assert traced == ran
    assert traced["peak_bytes"] == max(traced["phase_peaks"].values())
    assert traced["activation_bytes"] > 0 and traced["optimizer_state_bytes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dora", "qlora", "ptuning", "ia3", "adapter", "prefix"])
def test_trace_equals_run_other_methods(method):
    traced, ran, _, _ = trace_and_run("llama", method, precision="bf16")
    assert traced == ran


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed", "fp16-mixed", "amp-bf16"])
def test_trace_equals_run_precisions(precision):
    traced, ran, _, _ = trace_and_run("llama", "full", precision=precision)
    assert traced == ran


@pytest.mark.slow
@pytest.mark.parametrize("family,method", [("t5", "lora"), ("t5", "full"), ("mixtral", "lora"), ("mixtral", "full"),
                                           ("mixtral", "qlora"), ("gpt2", "qlora"), ("gemma", "prompt"),
                                           ("qwen2", "full")])
def test_trace_equals_run_families(family, method):
    precision = "bf16" if family == "mixtral" else "fp32"  # grouped_mm experts take bf16 only
    # (peft's kbit preparation would upcast the experts to fp32, which grouped_mm refuses)
    traced, ran, _, _ = trace_and_run(family, method, precision=precision,
                                      gradient_checkpointing=family in ("t5", "gpt2"),
                                      kbit_preparation=family != "mixtral")
    assert traced == ran


def test_optimizer_warmup_equals_a_real_warmup_step():
    """The tracer warms up with an optimizer step on zero gradients; a real step leaves the same state."""
    traced, ran, _, _ = trace_and_run("llama", "prompt", warmup="optimizer")
    _, ran_step, _, _ = trace_and_run("llama", "prompt", warmup="step")
    assert ran == ran_step == traced


def test_precision_recipes_store_what_they_say():
    spec, n_params = tiny("llama"), tiny("llama").total_params
    pure, _, _, _ = trace_step(spec, make_method("full"), Setup(**SETUP, precision="bf16"))
    mixed, _, _, _ = trace_step(spec, make_method("full"), Setup(**SETUP, precision="bf16-mixed"))
    fp32, _, _, _ = trace_step(spec, make_method("full"), Setup(**SETUP, precision="fp32"))
    assert pure.gradient_bytes == mixed.gradient_bytes == 2 * n_params
    assert fp32.gradient_bytes == 4 * n_params
    assert pure.master_weight_bytes == 0 and mixed.master_weight_bytes == 4 * n_params
    # AdamW keeps its two states in the dtype of what it steps (+ one 4-byte step counter per tensor).
    assert pure.optimizer_state_bytes - 2 * 2 * n_params == mixed.optimizer_state_bytes - 2 * 4 * n_params


def test_lora_gradients_and_states_match_the_analytic_model_exactly(tiny_setup=Setup(**SETUP, precision="bf16")):
    r = measure(tiny("llama"), make_method("lora"), tiny_setup, "trace")
    assert r.status == "ok"
    assert r.measured.gradients == r.predicted.gradients
    # torch's AdamW adds a 4-byte `step` tensor per parameter tensor (the estimate may or may not count it).
    n_tensors = sum(g.count for g in make_method("lora").adapt(tiny("llama")).tensors if g.trainable)
    assert r.measured.optimizer_states - r.predicted.optimizer_states in (0, 4 * n_tensors)


@pytest.mark.parametrize("method", ["lora", pytest.param("prompt", marks=pytest.mark.slow), "ptuning", "prefix",
                                    "adapter", pytest.param("full", marks=pytest.mark.slow)])
def test_checkpoint_bytes_computed_on_fake_tensors_equal_the_written_file(method):
    spec, setup = tiny("llama"), Setup(**SETUP)
    traced = measure(spec, make_method(method), setup, "trace")
    ran = measure(spec, make_method(method), setup, "run", timed_steps=0)
    assert traced.status == ran.status == "ok"
    assert traced.checkpoint_bytes == ran.checkpoint_bytes > 0


def test_result_dict_has_exactly_the_contract_keys():
    r = measure(tiny("llama"), make_method("lora"), Setup(**SETUP), "run", timed_steps=1)
    d = r.to_dict()
    contract = {"backend", "device", "status", "model", "setup", "method", "trainable_params", "measured_bytes",
                "peak_phase", "predicted_bytes", "checkpoint_bytes", "step_seconds", "tokens_per_second", "per_rank",
                "environment"}
    assert set(d) == contract | {"detail"}
    assert list(d["measured_bytes"]) == list(BYTE_KEYS) == list(d["predicted_bytes"])
    assert set(d["environment"]) == {"torch", "transformers", "peft", "device_name", "git_commit"}
    assert d["per_rank"] == [] and d["status"] == "ok" and d["backend"] == "run" and d["device"] == "cpu"
    assert d["step_seconds"] > 0 and d["tokens_per_second"] > 0
    assert d["trainable_params"] == make_method("lora").adapt(tiny("llama")).params.trainable
    assert d["peak_phase"] in ("forward", "backward", "optimizer")
    for k in BYTE_KEYS:
        assert d["detail"]["difference_bytes"][k] == d["predicted_bytes"][k] - d["measured_bytes"][k]


def test_known_limits_are_results_with_a_message():
    r = measure(tiny("llama"), make_method("prefix"), Setup(**SETUP, gradient_checkpointing=True), "trace")
    assert r.status == "unsupported" and "gradient-checkpointing" in r.detail.error
    assert r.measured is None
    r = measure(tiny("llama"), make_method("full"), Setup(**SETUP, optimizer="sgd"), "trace")
    assert r.status == "unsupported" and "AdamW" in r.detail.error
    r = measure(tiny("mixtral"), make_method("lora"), Setup(**SETUP, precision="fp32"), "trace")
    assert r.status == "unsupported" and "bf16" in r.detail.error


def test_bad_arguments_raise_user_errors():
    with pytest.raises(PeftcalcError, match="backend"):
        measure(tiny("llama"), make_method("lora"), Setup(**SETUP), "simulate")
    with pytest.raises(PeftcalcError, match="--nproc"):
        measure(tiny("llama"), make_method("lora"), Setup(**SETUP), "trace", nproc=2)
    with pytest.raises(PeftcalcError, match="--nproc"):
        measure(tiny("llama"), make_method("lora"), Setup(**SETUP, zero_stage=3, num_gpus=2), "trace")
    with pytest.raises(PeftcalcError, match="rank"):
        measure(tiny("llama"), make_method("lora", MethodOptions(rank=1000)), Setup(**SETUP), "trace")


def test_run_refuses_what_cannot_fit_in_host_memory():
    from peftcalc.model.catalogue import get_model

    r = measure(get_model("llama-3.1-405b"), make_method("full"), Setup(precision="fp32"), "run")
    assert r.status == "oom" and "host memory" in r.detail.error
