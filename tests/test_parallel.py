"""Tensor and pipeline parallelism in the memory model: one GPU's shard, checked against a traced step of that shard
(fake tensors) built independently from a hand-written config; LoRA's A/B split under tensor parallelism; the
pipeline's in-flight micro-batches against traced per-block activations; bad splits refused."""

from __future__ import annotations

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.estimate import adapt, estimate_method
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.model.hf_config import spec_from_config
from peftcalc.parallel import check_model_parallel, stage_spec
from peftcalc.setup import Setup

# A tiny Llama: 4 blocks, 4 heads (2 key/value heads) of 16, MLP 128, vocabulary 256.
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, tie_word_embeddings=False)
SETUP = Setup(precision="fp32", batch_size=2, seq_len=32)


def shard_config(tp: int, layers: int) -> dict:
    """One tensor rank of one stage, written out by hand as Megatron-LM splits a Llama (Shoeybi et al. 2019,
    section 3): heads, key/value heads, MLP width and vocabulary divided by tp; hidden size and head size kept."""
    return dict(TINY, num_attention_heads=4 // tp, num_key_value_heads=2 // tp, intermediate_size=128 // tp,
                vocab_size=256 // tp, num_hidden_layers=layers, head_dim=16)


def traced(cfg: dict, method: str):
    from peftcalc.measure.api import measure

    r = measure(spec_from_config(cfg, "shard", "test"), make_method(method), SETUP, backend="trace")
    assert r.status == "ok", r.detail.error
    return r.measured


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2), (2, 2)])
def test_one_gpu_is_its_traced_shard(method, tp, pp):
    spec = spec_from_config(TINY, "tiny", "test")
    est = estimate_method(spec, make_method(method), Setup(precision="fp32", batch_size=2, seq_len=32,
                                                            tensor_parallel=tp, pipeline_parallel=pp),
                          device="cpu").memory  # the traced shard runs the CPU's kernels
    shard = traced(shard_config(tp, 4 // pp), method)
    assert est.weight_bytes + est.buffer_bytes + est.master_weight_bytes == shard.weights
    assert est.gradient_bytes == shard.gradients and est.optimizer_state_bytes == shard.optimizer_states
    # the micro-batch being computed, as traced; the pipeline adds the others in flight to forward and backward
    # (next test); the optimizer step comes after every micro-batch
    flight = est.in_flight_activation_bytes
    one = max(est.forward_peak_bytes - flight, est.backward_peak_bytes - flight, est.optimizer_peak_bytes)
    assert one == pytest.approx(shard.peak, rel=0.02)
    assert (est.in_flight_activation_bytes > 0) == (pp > 1)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_1f1b_keeps_p_microbatches_of_the_first_stage(method):
    """Narayanan et al. 2021 section 2.2 / Korthikanti et al. 2022 section 4.2.3: the first of p stages holds p
    micro-batches' saved activations; per block, as traced (a stage of 3 blocks minus one of 2)."""
    spec = spec_from_config(TINY, "tiny", "test")
    est = estimate_method(spec, make_method(method), Setup(precision="fp32", batch_size=2, seq_len=32,
                                                            pipeline_parallel=2), device="cpu").memory
    per_block = traced(shard_config(1, 3), method).activations - traced(shard_config(1, 2), method).activations
    assert est.in_flight_activation_bytes == (2 - 1) * 2 * per_block


def test_lora_under_tensor_parallel_splits_b_on_column_and_a_on_row_layers():
    spec = get_model("llama-2-7b")
    shard = adapt(stage_spec(spec, 4, 32), make_method("lora", MethodOptions(targets=("q_proj", "o_proj"))))
    shapes = {g.name.split("self_attn.")[1]: g.shape for g in shard.tensors if g.trainable}
    h, r = spec.arch.hidden_size, 8
    assert shapes["q_proj.lora_A.weight"] == (r, h) and shapes["q_proj.lora_B.weight"] == (h // 4, r)  # column
    assert shapes["o_proj.lora_A.weight"] == (r, h // 4) and shapes["o_proj.lora_B.weight"] == (h, r)  # row


def test_sequence_parallel_divides_activations():
    """Korthikanti et al. 2022, Table 2: with sequence parallelism every activation term is divided by t."""
    spec = get_model("llama-2-7b")
    base = Setup(precision="bf16-mixed", seq_len=2048, gradient_checkpointing=True)
    one = estimate_method(spec, make_method("full"), base).memory.activation_bytes
    sp = estimate_method(spec, make_method("full"), Setup(precision="bf16-mixed", seq_len=2048,
                                                          gradient_checkpointing=True, tensor_parallel=4,
                                                          sequence_parallel=True)).memory.activation_bytes
    assert sp == pytest.approx(one / 4, rel=1e-6)


@pytest.mark.parametrize("model, tp, pp, message", [
    ("gpt2", 2, 1, "modelled for llama-style decoders"),
    ("llama-2-7b", 3, 1, "must divide the attention heads"),
    ("llama-2-7b", 1, 64, "more than the 32 blocks"),
])
def test_bad_splits_are_refused(model, tp, pp, message):
    with pytest.raises(PeftcalcError, match=message):
        check_model_parallel(get_model(model), tp, pp)
