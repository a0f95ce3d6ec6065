"""The analytic estimate against independent sources: the seed document, the papers, torch's behaviour."""

from __future__ import annotations

import pytest

from peftcalc.estimate import estimate, estimate_method
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.model.infer import infer_spec
from peftcalc.quant import nf4_bytes
from peftcalc.render.estimate import estimate_dict
from peftcalc.setup import Setup

SEED = infer_spec(7 * 10**9)


def adam_steps(spec) -> int:
    """torch's AdamW keeps a 4-byte fp32 `step` per trainable tensor (measured: bench/results)."""
    ad = make_method("full").adapt(spec)
    norms = {p.name for p in spec.others if p.kind == "norm"}
    return 4 * sum(g.count * (g.numel // spec.arch.hidden_size if g.name in norms else 1) for g in ad.tensors)


def test_seed_full_finetuning_7b_fp32_adam_is_112_gb():
    # seed document: weights 7B x 4 = 28 GB, gradients 28 GB, Adam states 7B x 8 = 56 GB, total 112 GB
    # (torch adds a 4-byte step per tensor: ~1 kB for 7B)
    m = estimate_method(SEED, make_method("full"), Setup(precision="fp32", optimizer="adamw")).memory
    assert (m.weight_bytes, m.gradient_bytes) == (28 * 10**9, 28 * 10**9)
    assert m.optimizer_state_bytes == 56 * 10**9 + adam_steps(SEED)
    assert 1000 < adam_steps(SEED) < 2000
    assert m.master_weight_bytes == 0
    assert m.model_state_bytes == 112 * 10**9 + adam_steps(SEED)


def test_seed_shape_is_llama_7b():
    a = SEED.arch
    assert (a.hidden_size, a.num_layers) == (4096, 32)
    assert SEED.total_params == 7 * 10**9


def test_seed_storage_ten_tasks_is_280_gb():
    r = estimate(SEED, Setup(), ("full", "lora")).results
    full, lora = r
    # seed: "10 tasks = 280GB"; each file adds its safetensors header (tens of kB)
    assert 28 * 10**9 < full.checkpoint.checkpoint_bytes < 28 * 10**9 + 10**6
    assert full.checkpoint.full_copies_bytes == 10 * full.checkpoint.checkpoint_bytes
    assert lora.checkpoint.checkpoint_bytes < 20 * 10**6  # seed: LoRA "~10MB" per task


def test_lora_matrix_example_is_256x_fewer():
    # seed: 4096x4096 = 16.7M; r=8: 8 x (4096 + 4096) = 65K, 256x
    spec = infer_spec(7 * 10**9)
    ad = make_method("lora", MethodOptions(rank=8, targets=("q_proj",))).adapt(spec)
    q = next(l for l in spec.linears if l.leaf == "q_proj")
    assert (q.in_features, q.out_features) == (4096, 4096)
    assert ad.params.trainable == 65536 * q.count
    assert q.weight_params // 65536 == 256


@pytest.mark.parametrize("precision, per_param", [
    ("fp32", 4 + 4 + 8),  # seed / ZeRO paper fp32
    ("bf16-mixed", 2 + 2 + 4 + 8),  # ZeRO paper: 2 + 2 + K=12 bytes per parameter
    ("fp16-mixed", 2 + 2 + 4 + 8),
    ("bf16", 2 + 2 + 4),  # torch AdamW keeps states in the parameter's dtype (DESIGN.md)
    ("amp-bf16", 4 + 4 + 8),
])
def test_full_finetuning_bytes_per_parameter(precision, per_param):
    spec = get_model("llama-2-7b")
    m = estimate_method(spec, make_method("full"), Setup(precision=precision)).memory
    assert m.model_state_bytes == per_param * spec.total_params + adam_steps(spec)


def test_lora_adapters_stay_fp32_in_bf16():
    # peft's autocast_adapter_dtype keeps LoRA weights (so gradients and Adam states) in fp32
    spec = get_model("llama-2-7b")
    r = estimate_method(spec, make_method("lora"), Setup(precision="bf16"))
    t = r.params.trainable
    assert r.memory.gradient_bytes == 4 * t
    assert r.memory.optimizer_state_bytes == 8 * t + 4 * 2 * 2 * 32  # + a step per lora_A/lora_B of q, v
    assert r.memory.weight_bytes == 2 * spec.total_params + 4 * t


def test_nf4_double_quantization_is_4_127_bits():
    # QLoRA paper, section 3: 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter
    n = 4096 * 4096
    assert round(nf4_bytes(n) * 8 / n, 3) == 4.127


def test_adam_8bit_is_about_two_bytes_per_param():
    spec = get_model("llama-2-7b")
    r = estimate_method(spec, make_method("full"), Setup(precision="bf16-mixed", optimizer="adamw-8bit"))
    per = r.memory.optimizer_state_bytes / spec.total_params
    assert 2.0 < per < 2.05  # two int8 states + blockwise absmax (Dettmers et al. 2021)


def test_zero_paper_figure_1():
    # Rajbhandari et al. 2020, Figure 1: 7.5B params, 64 GPUs, mixed precision Adam (K=12)
    spec = infer_spec(7_500_000_000)
    expected_gb = {0: 120, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in expected_gb.items():
        setup = Setup(precision="fp16-mixed", num_gpus=64, zero_stage=stage)
        m = estimate_method(spec, make_method("full"), setup).memory
        assert round(m.model_state_bytes / 1e9, 1) == pytest.approx(gb, abs=0.06)


def test_offload_moves_states_to_cpu():
    spec = get_model("llama-2-7b")
    on = estimate_method(spec, make_method("full"), Setup(precision="bf16-mixed", zero_stage=2, offload=True)).memory
    off = estimate_method(spec, make_method("full"), Setup(precision="bf16-mixed", zero_stage=2)).memory
    assert on.optimizer_state_bytes == on.master_weight_bytes == 0
    assert on.cpu_bytes == off.optimizer_state_bytes + off.master_weight_bytes


def test_json_contract_names():
    d = estimate_dict(estimate(SEED, Setup()))
    assert {"name", "family", "total_params", "hidden_size", "num_layers", "vocab_size"} <= set(d["model"])
    assert {"precision", "optimizer", "batch_size", "seq_len", "gradient_checkpointing", "attention", "num_gpus",
            "zero_stage"} <= set(d["setup"])
    for r in d["results"]:
        assert {"method", "trainable_params", "trainable_percent", "memory_bytes", "checkpoint_bytes"} <= set(r)
        mb = r["memory_bytes"]
        assert {"weights", "gradients", "optimizer_states", "master_weights", "activations", "overhead", "total"} <= set(mb)
        assert all(isinstance(v, int) for v in mb.values())
        assert isinstance(r["trainable_params"], int) and isinstance(r["checkpoint_bytes"], int)
    assert [r["method"] for r in d["results"]] == ["full", "lora", "qlora", "dora", "adapter", "prompt", "prefix",
                                                  "ptuning", "ia3"]


def test_prompt_tuning_lengthens_the_sequence():
    spec = get_model("llama-2-7b")
    def acts(method, tokens, seq):
        return estimate_method(spec, make_method(method, MethodOptions(virtual_tokens=tokens)),
                               Setup(seq_len=seq)).activations.after_forward_bytes

    # the blocks see virtual + real tokens: 100 virtual tokens cost what 100 more real ones cost, roughly
    longer = acts("prompt", 100, 512)
    assert acts("prompt", 1, 512) < longer
    assert abs(longer - acts("prompt", 1, 611)) < 0.01 * longer


def test_gradient_checkpointing_reduces_activations():
    spec = get_model("llama-2-7b")
    off = estimate_method(spec, make_method("full"), Setup(seq_len=2048)).memory.activation_bytes
    on = estimate_method(spec, make_method("full"), Setup(seq_len=2048, gradient_checkpointing=True)).memory.activation_bytes
    assert on < off / 3
