"""The QLoRA path against a real bitsandbytes step on the CPU: every component to the byte (packed weights,
absmax, nested absmax, per-weight constants, what peft's kbit preparation upcasts, 8-bit optimizer states, the
8-bit base's int8 weights and scales), the traced step (bitsandbytes' fake kernels) equal to the real one, the
replay equal to both, the releases before bitsandbytes PR #1270, and what the allocator sees inside one
bitsandbytes operator."""

from __future__ import annotations

import dataclasses

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from peftcalc.measure.adapted import build_adapted  # noqa: E402
from peftcalc.measure.api import measure  # noqa: E402
from peftcalc.measure.meter import LiveMeter, unique_storage_bytes  # noqa: E402
from peftcalc.measure.quantize import quant_state_tensors  # noqa: E402
from peftcalc.measure.step import measured_step, prepare_training  # noqa: E402
from peftcalc.measure.trace import trace_step  # noqa: E402
from peftcalc.memory import model_states  # noqa: E402
from peftcalc.methods import MethodOptions, make_method  # noqa: E402
from peftcalc.model.hf_config import spec_from_config  # noqa: E402
from peftcalc.precision import get_precision  # noqa: E402
from peftcalc.quant import Quantization, gemm_4bit_scratch_bytes, quantized_bytes  # noqa: E402
from peftcalc.setup import Setup  # noqa: E402

from .tiny_models import TINY_CONFIGS, tiny  # noqa: E402

SETUP = dict(batch_size=2, seq_len=32, precision="bf16")
# wide enough that LoRA tensors (r x 512) reach bitsandbytes' min_8bit_size of 4096: 8-bit optimizer states
WIDE = spec_from_config(dict(TINY_CONFIGS["llama"], hidden_size=512, intermediate_size=1024, num_attention_heads=8),
                        "wide-llama", "tests/measure/test_bitsandbytes.py")


def qlora(**options):
    return make_method("qlora", MethodOptions(**options))


def real_model(spec, method, setup):
    torch.manual_seed(0)
    model, adaptation, notes = build_adapted(spec, method, setup, device="cpu")
    return model, adaptation, notes


def trace_and_run(spec, method, setup):
    traced, adaptation, _, _ = trace_step(spec, method, setup, checkpoint=False)
    model, _, notes = real_model(spec, method, setup)
    prep = prepare_training(model, spec, setup, "cpu", notes)
    ran = measured_step(prep, LiveMeter(), warmup="step")
    a, b = dataclasses.asdict(traced), dataclasses.asdict(ran)
    a.pop("step_seconds"), b.pop("step_seconds")
    return a, b, adaptation, prep


def analytic(adaptation, setup):
    return model_states(adaptation, get_precision(setup.precision), setup.optimizer,
                        setup.kbit_preparation and adaptation.quantized_base)


CASES = [
    pytest.param("llama", dict(), dict(kbit_preparation=True, gradient_checkpointing=True), id="llama-nf4-dq-kbit"),
    pytest.param("llama", dict(quant_bits=8), dict(kbit_preparation=False), id="llama-int8"),
    pytest.param("llama", dict(), dict(kbit_preparation=True, kbit_gradient_checkpointing=False),
                 id="llama-kbit-without-checkpointing", marks=pytest.mark.slow),
    pytest.param("gpt2", dict(quant_type="fp4", double_quant=False), dict(kbit_preparation=False),
                 id="gpt2-fp4", marks=pytest.mark.slow),
    pytest.param("llama", dict(quant_storage="bf16"), dict(kbit_preparation=True, gradient_checkpointing=True),
                 id="llama-bf16-storage", marks=pytest.mark.slow),
    pytest.param("t5", dict(), dict(kbit_preparation=False), id="t5-nf4", marks=pytest.mark.slow),
    pytest.param("mixtral", dict(), dict(kbit_preparation=False), id="mixtral-nf4", marks=pytest.mark.slow),
    pytest.param("qwen2", dict(quant_bits=8), dict(kbit_preparation=True, gradient_checkpointing=True),
                 id="qwen2-int8-kbit", marks=pytest.mark.slow),
    pytest.param("gemma", dict(), dict(kbit_preparation=True, gradient_checkpointing=True, precision="amp-bf16"),
                 id="gemma-amp", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("family, options, setup_kw", CASES)
def test_traced_equals_real_and_model_states_are_exact(family, options, setup_kw):
    """Fake-tensor bitsandbytes equals a real bitsandbytes step on the CPU at every phase, and the analytic
    weights (parameters, buffers, QuantState tensors), gradients and optimizer states equal both to the byte."""
    setup = Setup(**{**SETUP, **setup_kw})
    traced, ran, adaptation, _ = trace_and_run(tiny(family), qlora(**options), setup)
    assert traced == ran
    states = analytic(adaptation, setup)
    assert ran["weight_bytes"] == states.weight_bytes + states.buffer_bytes
    assert ran["gradient_bytes"] == states.gradient_bytes
    assert ran["optimizer_state_bytes"] == states.optimizer_state_bytes


def test_each_quantized_weight_component_to_the_byte():
    """Every Linear4bit of a real model: the packed parameter, absmax + nested absmax, and the per-weight
    constants (4-bit code, nested code, offset), against quant.quantized_bytes."""
    spec, method = tiny("llama"), qlora()
    model, adaptation, _ = real_model(spec, method, Setup(**SETUP, kbit_preparation=False))
    layers = [m for m in model.modules() if type(m) is bnb.nn.Linear4bit]
    assert len(layers) == 14  # 7 linears x 2 layers; the head stays dense
    for layer in layers:
        out_f, in_f = layer.out_features, layer.in_features
        s = layer.weight.quant_state
        expected = quantized_bytes(out_f * in_f, out_f, adaptation.quantization)
        assert layer.weight.untyped_storage().nbytes() == expected.packed
        assert s.absmax.untyped_storage().nbytes() + s.state2.absmax.untyped_storage().nbytes() == expected.scales
        assert sum(t.untyped_storage().nbytes() for t in (s.code, s.state2.code, s.offset)) == expected.constants
    assert type(model.base_model.model.lm_head) is torch.nn.Linear


def test_the_8bit_base_keeps_int8_weights_and_row_scales():
    spec, method = tiny("llama"), qlora(quant_bits=8)
    model, adaptation, _ = real_model(spec, method, Setup(**SETUP, kbit_preparation=False))
    layers = [m for m in model.modules() if type(m) is bnb.nn.Linear8bitLt]
    assert len(layers) == 14
    for layer in layers:
        assert layer.weight.dtype == torch.int8
        b = quantized_bytes(layer.in_features * layer.out_features, layer.out_features, adaptation.quantization)
        assert layer.weight.untyped_storage().nbytes() == b.packed
        assert unique_storage_bytes([layer.weight.SCB]) == b.scales


def test_kbit_preparation_upcasts_every_non_quantized_parameter():
    """peft's prepare_model_for_kbit_training: embeddings, norms and the head in fp32; the 4-bit weights untouched;
    gradient checkpointing on."""
    spec, method = tiny("llama"), qlora()
    model, _, _ = real_model(spec, method, Setup(**SETUP))
    for name, p in model.named_parameters():
        if type(p).__name__ == "Params4bit":
            assert p.dtype == torch.uint8, name
        else:
            assert p.dtype == torch.float32, name
    assert model.base_model.model.model.gradient_checkpointing
    assert model.base_model.model.is_loaded_in_4bit


@pytest.mark.parametrize("optimizer", ["adamw-8bit", pytest.param("paged-adamw-8bit", marks=pytest.mark.slow)])
def test_8bit_optimizer_states_to_the_byte(optimizer):
    """bitsandbytes AdamW8bit / PagedAdamW8bit (paged falls back on the CPU): uint8 states + fp32 absmax per 256
    for tensors of at least 4096 elements, fp32 states below, the two code tables once."""
    setup = Setup(**SETUP, optimizer=optimizer, kbit_preparation=False)
    model, adaptation, notes = real_model(WIDE, qlora(), setup)
    prep = prepare_training(model, WIDE, setup, "cpu", notes)
    ran = measured_step(prep, LiveMeter())
    assert ran.optimizer_state_bytes == analytic(adaptation, setup).optimizer_state_bytes
    states = [st for st in prep.optimizer.state.values()]
    assert any(st["state1"].dtype == torch.uint8 for st in states)
    assert any(st["state1"].dtype == torch.float32 for st in states)  # k/v lora_B: 128 x 8 < 4096


def test_quant_states_are_counted_with_the_weights():
    """The meter counts QuantState tensors (not parameters or buffers) with the weights: without them the
    measured weights would miss every absmax."""
    model, adaptation, _ = real_model(tiny("llama"), qlora(), Setup(**SETUP, kbit_preparation=False))
    extra = unique_storage_bytes(quant_state_tensors(model))
    q = adaptation.quantization
    expected = sum((quantized_bytes(g.numel, g.shape[0], q).scales + quantized_bytes(g.numel, g.shape[0], q).constants)
                   * g.count for g in adaptation.tensors if g.format != "dense")
    assert extra == expected


@pytest.mark.slow
def test_t5_wo_stays_unquantized_and_its_gradients_match():
    """transformers keeps T5's `wo` out of the quantization (_keep_in_fp32_modules); the stand-in quantized it and
    mispredicted the gradients by its LoRA's size. Now predicted = measured."""
    spec = tiny("t5")
    model, adaptation, _ = real_model(spec, qlora(), Setup(**SETUP, kbit_preparation=False))
    wo = [m for n, m in model.named_modules() if n.endswith("DenseReluDense.wo.base_layer")]
    assert wo and all(type(m) is torch.nn.Linear for m in wo)
    assert all(g.format == "dense" for g in adaptation.tensors if ".wo." in g.name)
    r = measure(spec, qlora(), Setup(**SETUP, kbit_preparation=False), backend="trace", save_checkpoint=False)
    assert r.measured.gradients == r.predicted.gradients


@pytest.mark.parametrize("version", ["0.41.1", pytest.param("0.45.0", marks=pytest.mark.slow), None])
@pytest.mark.parametrize("setup_kw", [dict(kbit_preparation=False),
                                      pytest.param(dict(kbit_preparation=False, precision="amp-bf16"),
                                                   marks=pytest.mark.slow)])
def test_the_replay_equals_the_step_for_each_release(version, setup_kw):
    """Before 0.43.2 MatMul4Bit kept every input for backward; the replay keyed on --bitsandbytes-version equals a
    real step running that release's MatMul4Bit (reproduced on today's kernels), to the byte."""
    setup = Setup(**{**SETUP, **setup_kw, "bitsandbytes_version": version})
    r = measure(tiny("llama"), qlora(), setup, backend="run", save_checkpoint=False, timed_steps=0)
    assert r.status == "ok", r.detail.error
    assert r.measured == r.predicted
    if version == "0.41.1":
        assert any("MatMul4Bit as bitsandbytes 0.41.1" in n for n in r.detail.notes)


@pytest.mark.slow
def test_the_saved_inputs_are_what_pr_1270_removed():
    """bf16, no kbit preparation, LoRA on all linears: the old release keeps, per layer, the attention input (q, k,
    v share it), the MLP input (gate and up share it) and down_proj's input; o_proj's input is sdpa's output, which
    sdpa saves anyway; layer 0's q/k/v input does not require grad. Independent of the replay: the formula."""
    spec = tiny("llama")
    a = spec.arch
    old = measure(spec, qlora(), Setup(**SETUP, kbit_preparation=False, bitsandbytes_version="0.41.1"),
                  backend="run", save_checkpoint=False, timed_steps=0)
    new = measure(spec, qlora(), Setup(**SETUP, kbit_preparation=False), backend="run", save_checkpoint=False,
                  timed_steps=0)
    tokens, layers = SETUP["batch_size"] * SETUP["seq_len"], a.num_layers
    kept = tokens * 2 * (layers * (2 * a.hidden_size + a.ffn_size) - a.hidden_size)
    assert old.measured.activations - new.measured.activations == kept
    assert old.predicted.activations - new.predicted.activations == kept


def test_the_allocator_sees_the_weight_dequantized_inside_gemm_4bit():
    """A CPU run of a bitsandbytes model is also measured at the allocator: inside one `bitsandbytes::gemm_4bit`
    (backends/default/ops.py) the nested absmax (fp32, twice: dequantized, then + offset) and the whole weight in
    the compute dtype live at once, which the dispatch-level meter cannot see."""
    setup = Setup(**SETUP, kbit_preparation=False)
    r = measure(WIDE, qlora(), setup, backend="run", save_checkpoint=False, timed_steps=0)
    alloc = r.detail.allocator
    assert alloc is not None
    gemm = next(s for s in alloc.scratch if s.op == "bitsandbytes::gemm_4bit")
    largest = max((l for l in WIDE.linears if not l.head), key=lambda l: l.in_features * l.out_features)
    # the dequantized weight (bf16) and two fp32 absmax copies, by bitsandbytes' code, plus oneDNN's own scratch
    expected = gemm_4bit_scratch_bytes(largest.out_features, largest.in_features, 2, Quantization())
    assert expected <= gemm.scratch_bytes <= 2 * expected
    assert all(alloc.phase_peaks[p] >= alloc.dispatch_phase_peaks[p] for p in ("forward", "backward"))
    assert alloc.unseen_bytes["forward"] > 0
    assert r.to_dict()["detail"]["allocator"]["scratch"][0]["scratch_bytes"] > 0
