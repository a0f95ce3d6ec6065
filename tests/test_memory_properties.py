"""Properties of the memory model that must hold for any model, method and setup (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peftcalc.estimate import estimate_method
from peftcalc.memory import model_states
from peftcalc.methods import DEFAULT_TABLE, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.precision import RECIPES, get_precision
from peftcalc.setup import Setup

MODELS = ["gpt2", "llama-2-7b", "t5-base", "mixtral-8x7b", "phi-3-mini", "bert-base-uncased", "falcon-7b"]
setups = st.builds(
    Setup,
    precision=st.sampled_from(sorted(RECIPES)),
    optimizer=st.sampled_from(["adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion"]),
    batch_size=st.integers(1, 16),
    seq_len=st.integers(1, 8192),
    gradient_checkpointing=st.booleans(),
    attention=st.sampled_from(["sdpa", "eager"]),
    adamw_impl=st.sampled_from(["forloop", "foreach", "fused"]),
)


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), method=st.sampled_from(DEFAULT_TABLE), setup=setups,
       grow=st.sampled_from(["batch_size", "seq_len"]), extra=st.integers(1, 4096))
def test_memory_is_monotonic_in_batch_and_sequence(model, method, setup, grow, extra):
    spec = get_model(model)
    m = make_method(method)
    bigger = Setup(**{**setup.__dict__, grow: getattr(setup, grow) + extra})
    small, large = estimate_method(spec, m, setup).memory, estimate_method(spec, m, bigger).memory
    assert large.activation_bytes > small.activation_bytes
    assert large.total >= small.total
    assert large.model_state_bytes == small.model_state_bytes


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), method=st.sampled_from(DEFAULT_TABLE), setup=setups)
def test_total_is_the_sum_of_its_parts(model, method, setup):
    r = estimate_method(get_model(model), make_method(method), setup)
    m = r.memory
    assert m.model_state_bytes == m.weight_bytes + m.gradient_bytes + m.optimizer_state_bytes + m.master_weight_bytes
    # the peak is the largest phase; the total adds the overhead lines
    assert m.peak_bytes == max(m.forward_peak_bytes, m.backward_peak_bytes, m.optimizer_peak_bytes)
    assert m.total == m.peak_bytes + m.overhead_bytes == m.peak_bytes + sum(line.bytes for line in m.overhead)
    assert m.start_bytes == m.weight_bytes + m.buffer_bytes + m.master_weight_bytes + m.optimizer_state_bytes \
        + m.input_bytes
    assert m.start_bytes + m.activation_bytes <= m.forward_peak_bytes
    if setup.zero_stage < 2 and not setup.offload:
        assert m.optimizer_peak_bytes >= m.start_bytes + m.gradient_bytes + m.temporary_bytes
    assert r.activations.total == m.activation_bytes
    # gradients exist exactly for trainable tensors, in their dtype
    assert (m.gradient_bytes == 0) == (r.params.trainable == 0)


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), method=st.sampled_from(DEFAULT_TABLE), stage=st.integers(0, 3),
       gpus=st.integers(1, 512))
def test_more_gpus_never_need_more_memory_per_gpu(model, method, stage, gpus):
    spec, m = get_model(model), make_method(method)
    a = estimate_method(spec, m, Setup(precision="bf16-mixed", num_gpus=gpus, zero_stage=stage)).memory
    b = estimate_method(spec, m, Setup(precision="bf16-mixed", num_gpus=gpus * 2, zero_stage=stage)).memory
    assert b.model_state_bytes <= a.model_state_bytes


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), method=st.sampled_from(DEFAULT_TABLE), precision=st.sampled_from(sorted(RECIPES)))
def test_frozen_weights_have_no_gradients_or_states(model, method, precision):
    spec = get_model(model)
    ad = make_method(method).adapt(spec)
    states = model_states(ad, get_precision(precision), "adamw")
    p = get_precision(precision)
    size = {"fp32": 4, "bf16": 2, "fp16": 2}
    trainable_bytes = sum(g.numel * g.count * size[p.adapter_dtype if g.added else p.param_dtype]
                          for g in ad.tensors if g.trainable)
    assert states.gradient_bytes == trainable_bytes
