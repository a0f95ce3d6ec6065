"""The replayed step (peftcalc/stepsim) behind activations and peaks: properties, and the traced step itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftcalc.activations import activation_bytes
from peftcalc.estimate import estimate_method
from peftcalc.methods import DEFAULT_TABLE, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.model.hf_config import spec_from_config
from peftcalc.setup import Setup
from peftcalc.stepsim.poly import dominated, evaluate, numel, prune

FAMILIES = ["llama-2-7b", "mistral-7b", "qwen2.5-0.5b", "gemma-2b", "phi-3-mini", "mixtral-8x7b", "gpt2", "opt-350m",
            "bloom-560m", "falcon-7b", "t5-base", "bert-base-uncased", "roberta-base"]
TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=704, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=6, vocab_size=1000, max_position_embeddings=4096)


def acts(model: str, method: str, **setup):
    spec = get_model(model) if isinstance(model, str) else model
    return activation_bytes(make_method(method).adapt(spec), Setup(**setup))


def test_polynomials():
    assert numel(("B", 4, "T", 2)) == {("B", "T"): 8}
    p = {("B", "T"): 3, (): 5}
    assert evaluate(p, {"B": 2, "T": 10}) == 65
    assert dominated({("B", "T"): 2}, p) and not dominated(p, {("B", "T"): 2})
    assert prune([{("B", "T"): 2}, p, {("B", "K", "T"): 1}]) == [p, {("B", "K", "T"): 1}] or \
        sorted(map(str, prune([{("B", "T"): 2}, p, {("B", "K", "T"): 1}]))) == sorted(map(str, [p, {("B", "K", "T"): 1}]))


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("method", DEFAULT_TABLE)
def test_every_family_and_method_is_replayed(model, method):
    a = acts(model, method, precision="bf16", seq_len=256, attention="eager" if model.startswith("bloom") else "sdpa")
    assert 0 < a.after_forward_bytes <= a.forward_peak_bytes
    assert a.backward_peak_bytes >= a.gradient_bytes


@pytest.mark.parametrize("model", ["llama-2-7b", "gpt2", "t5-base", "mixtral-8x7b"])
def test_activations_grow_with_batch_and_sequence(model):
    small = acts(model, "lora", seq_len=512)
    assert acts(model, "lora", seq_len=1024).after_forward_bytes > small.after_forward_bytes
    assert acts(model, "lora", seq_len=512, batch_size=2).after_forward_bytes > small.after_forward_bytes


def test_checkpointing_keeps_layer_inputs_only():
    off = acts("llama-2-7b", "full", seq_len=2048, precision="bf16")
    on = acts("llama-2-7b", "full", seq_len=2048, precision="bf16", gradient_checkpointing=True)
    assert on.after_forward_bytes < off.after_forward_bytes / 5
    # each of the 32 layers keeps its input (2 bytes x 2048 x 4096) plus the loss path
    assert on.after_forward_bytes > 32 * 2 * 2048 * 4096


def test_frozen_base_saves_less_than_full_fine_tuning():
    full, lora = acts("llama-2-7b", "full", seq_len=1024), acts("llama-2-7b", "lora", seq_len=1024)
    assert lora.after_forward_bytes < full.after_forward_bytes


def test_eager_attention_keeps_the_score_matrix():
    sdpa = acts("llama-2-7b", "lora", seq_len=2048, precision="bf16")
    eager = acts("llama-2-7b", "lora", seq_len=2048, precision="bf16", attention="eager")
    # per layer the fp32 softmax (heads x s^2 x 4 bytes) and its bf16 copy, less what sdpa saves instead
    assert eager.after_forward_bytes - sdpa.after_forward_bytes >= 32 * 32 * 2048 * 2048 * 5.5


def test_loss_path_is_the_peak_for_a_large_vocabulary():
    # Gemma (256k vocabulary): backward starts with two more fp32 (s x V) tensors beside the saved log-softmax:
    # nll_loss_backward's and _log_softmax_backward_data's outputs
    a = acts("gemma-2b", "lora", seq_len=4096, precision="bf16")
    assert a.backward_peak_bytes - a.after_forward_bytes >= 1.99 * 4 * 4096 * 256000


def test_prompt_tokens_lengthen_every_layer():
    one = acts("llama-2-7b", "prompt", seq_len=512)
    spec = get_model("llama-2-7b")
    longer = activation_bytes(make_method("prompt").adapt(spec), Setup(seq_len=612))
    assert one.after_forward_bytes < longer.after_forward_bytes


def test_gradients_of_the_replay_equal_the_model_states():
    for model in ("llama-2-7b", "gpt2", "t5-base"):
        for method in ("full", "lora", "dora", "ia3"):
            r = estimate_method(get_model(model), make_method(method), Setup(seq_len=256))
            assert r.activations.gradient_bytes == r.memory.gradient_bytes, (model, method)


def test_the_core_does_not_import_torch():
    code = ("import sys; from peftcalc.estimate import estimate_method; from peftcalc.methods import make_method; "
            "from peftcalc.model.catalogue import get_model; from peftcalc.setup import Setup; "
            "estimate_method(get_model('gpt2'), make_method('lora'), Setup()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# ---- against the traced step (torch) ------------------------------------------------------------------------

@pytest.mark.parametrize("method, setup", [
    ("full", dict(precision="fp32", adamw_impl="foreach")),
    ("lora", dict(precision="bf16", gradient_checkpointing=True, adamw_impl="fused")),
    ("prompt", dict(precision="bf16-mixed", attention="eager", batch_size=2, adamw_impl="forloop")),
])
def test_equals_the_traced_step(method, setup):
    pytest.importorskip("torch")
    from peftcalc.measure.api import measure

    spec = spec_from_config(TINY_LLAMA, "tiny-llama", "test")
    s = Setup(seq_len=128, **setup)
    r = measure(spec, make_method(method), s, save_checkpoint=False)
    assert r.status == "ok", r.detail.error
    m = estimate_method(spec, make_method(method), s, device="cpu").memory  # the traced step ran on the CPU
    assert m.weight_bytes + m.buffer_bytes + m.master_weight_bytes == r.measured.weights
    assert m.gradient_bytes == r.measured.gradients
    assert m.optimizer_state_bytes == r.measured.optimizer_states
    assert abs(m.activation_bytes - r.measured.activations) <= 2048  # labels' padding: 8 bytes per sequence
    for phase, value in r.detail.phase_peaks.items():
        assert abs(m.phases[phase] - value) <= max(4096, 0.001 * value), phase
    assert m.peak_phase == r.peak_phase
