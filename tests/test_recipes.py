"""The recipe options against the traced step (torch on the CPU, where the path runs there) and against the
kernels' own code (where it does not): precision recipes with autocast and bf16 adapters, reentrant
checkpointing, and what each option says it keeps."""

from __future__ import annotations

import pytest

from peftcalc.estimate import estimate_method
from peftcalc.methods import make_method
from peftcalc.model.hf_config import spec_from_config
from peftcalc.recipes import recipe_lines
from peftcalc.setup import Setup

TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=704, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=6, vocab_size=1000, max_position_embeddings=4096)


@pytest.mark.parametrize("method, setup", [
    ("lora", dict(precision="bf16-autocast", adamw_impl="fused")),
    ("lora", dict(precision="bf16-true", adamw_impl="fused")),
    ("lora", dict(precision="bf16", gradient_checkpointing=True, reentrant_checkpointing=True, adamw_impl="fused")),
    ("full", dict(precision="fp32", gradient_checkpointing=True, reentrant_checkpointing=True, adamw_impl="fused")),
])
def test_equals_the_traced_step(method, setup):
    pytest.importorskip("torch")
    from peftcalc.measure.api import measure

    spec = spec_from_config(TINY_LLAMA, "tiny-llama", "test")
    s = Setup(seq_len=128, batch_size=2, **setup)
    r = measure(spec, make_method(method), s, save_checkpoint=False)
    assert r.status == "ok", r.detail.error
    m = estimate_method(spec, make_method(method), s, device="cpu").memory  # the traced step ran on the CPU
    assert m.weight_bytes + m.buffer_bytes + m.master_weight_bytes == r.measured.weights
    assert m.gradient_bytes == r.measured.gradients
    assert abs(m.activation_bytes - r.measured.activations) <= 2048
    for phase, value in r.detail.phase_peaks.items():
        assert abs(m.phases[phase] - value) <= max(4096, 0.001 * value), phase


# ---- what each option changes, for a 7-8B model on a GPU -----------------------------------------------------

def _mem(model="llama-3-8b", method="lora", **setup):
    from peftcalc.model.catalogue import get_model

    s = dict(precision="bf16", batch_size=2, seq_len=4096)
    s.update(setup)
    return estimate_method(get_model(model), make_method(method), Setup(**s)).memory


def test_fused_kernels_keep_no_score_matrix_but_eager_does():
    sdpa, fa2, flex, eager = (_mem(attention=a) for a in ("sdpa", "flash_attention_2", "flex_attention", "eager"))
    assert sdpa.activation_bytes == fa2.activation_bytes == flex.activation_bytes
    # eager keeps each layer's fp32 softmax (B, H, T, T): 2 x 32 x 4096^2 x 4 bytes x 32 layers, and more
    assert eager.activation_bytes - sdpa.activation_bytes >= 2 * 32 * 4096**2 * 4 * 32


def test_padding_costs_a_mask_and_repeated_heads_with_sdpa_only():
    full, padded = _mem(), _mem(padded=True)
    # per layer: the float mask (B, 1, T, T) bf16, and the key/value heads repeated 8 -> 32 (repeat_kv copies)
    layer = 2 * 4096**2 * 2 + 2 * 2 * 4096 * (32 - 8) * 128 * 2
    assert padded.activation_bytes - full.activation_bytes >= 32 * layer * 0.99
    fa2, fa2_padded = _mem(attention="flash_attention_2"), _mem(attention="flash_attention_2", padded=True)
    assert fa2_padded.activation_bytes - fa2.activation_bytes < 0.02 * fa2.activation_bytes  # unpad copies only


def test_the_loss_variants_order():
    standard, chunked, fused = (_mem(loss=x) for x in ("standard", "chunked", "fused"))
    assert fused.peak_bytes < chunked.peak_bytes < standard.peak_bytes
    vocab_fp32 = 2 * 4096 * 128256 * 4
    assert standard.forward_peak_bytes - fused.forward_peak_bytes >= 2 * vocab_fp32  # fp32 copy and log-softmax


def test_reentrant_checkpointing_never_holds_less():
    plain = _mem(gradient_checkpointing=True)
    reentrant = _mem(gradient_checkpointing=True, reentrant_checkpointing=True)
    assert reentrant.backward_peak_bytes >= plain.backward_peak_bytes
    assert reentrant.activation_bytes == plain.activation_bytes  # the same inputs kept per layer


def test_optimizer_state_dtype_sets_the_state_bytes():
    bf16 = _mem(method="full", seq_len=512)
    fp32 = _mem(method="full", seq_len=512, optimizer_state_dtype="fp32")
    assert fp32.optimizer_state_bytes - bf16.optimizer_state_bytes == 2 * 2 * 8_030_261_248 - 0  # 2 states, 2 B more


def test_every_option_states_what_it_keeps():
    lines = recipe_lines(Setup(attention="flash_attention_2", loss="fused", packing=True, gradient_checkpointing=True,
                               reentrant_checkpointing=True, optimizer_state_dtype="bf16"))
    assert "logsumexp" in lines["attention kernel"] and "Liger" in lines["loss"] and "packed" in lines["rows"]
    assert "use_reentrant=True" in lines["gradient checkpointing"] and "bf16" in lines["optimizer state dtype"]


@pytest.mark.parametrize("method, setup, dropout", [
    ("lora", dict(precision="bf16", adamw_impl="fused"), 0.1),
    ("lora", dict(precision="bf16-autocast", gradient_checkpointing=True, adamw_impl="fused"), 0.05),
])
def test_lora_dropout_equals_the_traced_step(method, setup, dropout):
    pytest.importorskip("torch")
    from peftcalc.measure.api import measure
    from peftcalc.methods import MethodOptions

    spec = spec_from_config(TINY_LLAMA, "tiny-llama", "test")
    s = Setup(seq_len=128, batch_size=2, **setup)
    m_ = make_method(method, MethodOptions(lora_dropout=dropout))
    r = measure(spec, m_, s, save_checkpoint=False)
    assert r.status == "ok", r.detail.error
    m = estimate_method(spec, m_, s, device="cpu").memory
    plain = estimate_method(spec, make_method(method), s, device="cpu").memory
    assert m.peak_bytes > plain.peak_bytes  # each adapted module keeps its dropped input (recomputed under ckpt)
    assert abs(m.activation_bytes - r.measured.activations) <= 2048
    for phase, value in r.detail.phase_peaks.items():
        assert abs(m.phases[phase] - value) <= max(4096, 0.001 * value), phase


def test_gpu_sdpa_drops_the_cpu_math_path():
    """GPT-2 and BERT attention dropout: on the CPU sdpa runs the math composite (the (T, T) probabilities and the
    dropout noise kept); on CUDA the flash kernel draws dropout inside and keeps only a logsumexp."""
    from peftcalc.model.catalogue import get_model

    for name in ("gpt2", "bert-base-uncased"):
        s = Setup(precision="bf16", batch_size=4, seq_len=1024)
        cpu = estimate_method(get_model(name), make_method("lora"), s, device="cpu").memory
        gpu = estimate_method(get_model(name), make_method("lora"), s, device="cuda").memory
        heads, layers = get_model(name).arch.num_heads, get_model(name).arch.num_layers
        assert cpu.activation_bytes - gpu.activation_bytes >= layers * 4 * heads * 1024**2 * 4  # fp32 probs
