"""FLOPs per token by method, against published totals and hand arithmetic from model configs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftcalc.compute import (
    Flops,
    attention_forward_flops,
    break_even_runs,
    check_mfu,
    check_run,
    frozen_training_flops_per_position,
    full_training_flops_per_position,
    head_matmul_params,
    matmul_params,
    purchase_usd,
    recompute_flops_per_position,
    rent_usd,
    run_flops,
    training_flops_per_seq,
)
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import adapt
from peftcalc.methods import DEFAULT_TABLE, MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.model.hf_config import spec_from_config

# GPT-3 175B (Brown et al. 2020, arXiv:2005.14165, Table 2.1): d_model 12288, 96 layers, 96 heads, context 2048,
# GPT-2's vocabulary and tied embeddings.
GPT3 = dict(model_type="gpt2", n_embd=12288, n_layer=96, n_head=96, n_positions=2048, vocab_size=50257)


@pytest.fixture(scope="module")
def llama7b():
    return get_model("llama-2-7b")


def test_llama_matmul_params_by_hand(llama7b):
    # Llama-2-7B: per layer q,k,v,o 4 x 4096^2 and gate/up/down 3 x 4096 x 11008, 32 layers; an untied 32000 x 4096 head.
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    head = 32000 * 4096
    assert matmul_params(llama7b) == 32 * per_layer + head
    assert head_matmul_params(llama7b) == head
    # N excludes the input embedding and the norms: everything else of the 6,738,415,616 parameters
    assert matmul_params(llama7b) == 6_738_415_616 - 32000 * 4096 - (2 * 32 + 1) * 4096


def test_gpt3_training_compute_matches_brown_et_al():
    """Brown et al. 2020, Table D.1: GPT-3 175B was trained with 3.14e23 FLOPs on 300B tokens, counted as 6ND
    without attention. Our 6N part reproduces it; PaLM's attention term adds 12LHQT/6N = 2.8 % at 2048 tokens."""
    spec = spec_from_config(GPT3, "gpt3-175b", "Brown et al. 2020")
    tokens = 300 * 10**9
    six_nd = 6 * matmul_params(spec) * tokens
    assert six_nd == pytest.approx(3.14e23, rel=0.005)
    flops = training_flops_per_seq(adapt(spec, make_method("full")), 2048, False)
    total = run_flops(flops, tokens, 1)
    attention = 12 * 96 * 12288 * 2048 * tokens  # 12·L·H·Q·T, with H·Q = d_model
    assert total == six_nd + attention
    assert attention / six_nd == pytest.approx(0.0277, abs=0.0005)


def test_mixtral_active_parameters():
    """Jiang et al. 2024 (arXiv:2401.04088): 47B parameters, 13B active per token (top-2 of 8 experts)."""
    spec = get_model("mixtral-8x7b")
    assert spec.total_params == pytest.approx(46.7e9, rel=0.01)
    active = matmul_params(spec) + 32000 * 4096  # + the input embedding, which the paper's "active" includes
    assert active == pytest.approx(12.9e9, rel=0.01)


def test_full_vs_frozen_per_position(llama7b):
    n = matmul_params(llama7b)
    keys = 2048
    attn_fwd = 4 * 32 * 4096 * keys  # QK^T and AV: 2 x 2·d_attn·T per token per layer
    assert attention_forward_flops(llama7b, keys) == attn_fwd
    assert full_training_flops_per_position(llama7b, keys) == 6 * n + 3 * attn_fwd
    assert frozen_training_flops_per_position(llama7b, 4_194_304, keys) == 4 * n + 3 * attn_fwd + 6 * 4_194_304
    # checkpointing re-runs the blocks' forward: the head is not recomputed
    head = 32000 * 4096
    assert recompute_flops_per_position(llama7b, 0, keys, True) == 2 * (n - head) + attn_fwd


def test_lora_is_about_two_thirds_of_full(llama7b):
    seq = 512
    full = training_flops_per_seq(adapt(llama7b, make_method("full")), seq, False).flops_per_token
    lora = training_flops_per_seq(adapt(llama7b, make_method("lora")), seq, False).flops_per_token
    # (4N + A) / (6N + A) with a small attention term A: just above 2/3
    assert 0.66 < lora / full < 0.70
    # exactly: the difference is the weight gradients 2N, less the adapters' 6 x trainable
    trainable = adapt(llama7b, make_method("lora")).params.trainable
    assert trainable == 4_194_304  # r=8 on q_proj, v_proj: 32 x 2 x 8 x (4096 + 4096)
    assert full - lora == 2 * matmul_params(llama7b) - 6 * trainable


@pytest.mark.parametrize("method", DEFAULT_TABLE)
def test_checkpointing_adds_one_forward(llama7b, method):
    a = adapt(llama7b, make_method(method))
    plain = training_flops_per_seq(a, 1024, False)
    ckpt = training_flops_per_seq(a, 1024, True)
    assert plain.recompute_flops_per_seq == 0
    assert ckpt.train_flops_per_seq == plain.train_flops_per_seq
    # one extra forward is a third of full training and a half of frozen-base training (roughly)
    ratio = ckpt.flops_per_seq / plain.flops_per_seq
    assert (1.30 < ratio < 1.34) if method == "full" else (1.45 < ratio < 1.51)


def test_prompt_tuning_lengthens_every_sequence(llama7b):
    seq, v = 256, 20
    a = adapt(llama7b, make_method("prompt", MethodOptions(virtual_tokens=v)))
    f = training_flops_per_seq(a, seq, False)
    assert (f.positions, f.keys) == (seq + v, seq + v)
    per_position = frozen_training_flops_per_position(llama7b, a.params.trainable, seq + v)
    assert f.flops_per_seq == per_position * (seq + v)
    assert f.flops_per_token == round(per_position * (seq + v) / seq)


def test_prefix_tuning_lengthens_only_the_keys(llama7b):
    seq, v = 256, 30
    a = adapt(llama7b, make_method("prefix", MethodOptions(virtual_tokens=v)))
    f = training_flops_per_seq(a, seq, False)
    assert (f.positions, f.keys) == (seq, seq + v)
    lora_like = frozen_training_flops_per_position(llama7b, a.params.trainable, seq)
    assert f.flops_per_seq - lora_like * seq == 3 * 4 * 32 * 4096 * v * seq


def test_qlora_counts_the_same_matmuls_as_lora(llama7b):
    """Dequantization is not counted as FLOPs (it is in QLoRA's MFU); the matmuls are LoRA's on all linears."""
    opts = MethodOptions(rank=16, targets=("all-linear",))
    q = training_flops_per_seq(adapt(llama7b, make_method("qlora", opts)), 512, False)
    lo = training_flops_per_seq(adapt(llama7b, make_method("lora", opts)), 512, False)
    assert q == lo


def test_flops_are_integers(llama7b):
    f = training_flops_per_seq(adapt(llama7b, make_method("lora")), 333, True)
    for v in (f.train_flops_per_seq, f.recompute_flops_per_seq, f.flops_per_seq, f.flops_per_token):
        assert type(v) is int
    assert type(run_flops(f, 10**9, 2.5)) is int


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(1, 8192), method=st.sampled_from(DEFAULT_TABLE), ckpt=st.booleans())
def test_flops_per_token_grow_with_sequence(seq, method, ckpt):
    a = adapt(get_model("llama-2-7b"), make_method(method))
    one = training_flops_per_seq(a, seq, ckpt)
    two = training_flops_per_seq(a, seq + 1, ckpt)
    assert two.flops_per_seq > one.flops_per_seq > 0
    # per data token, the attention term grows with the sequence (virtual tokens amortise, but never below 4N)
    assert one.flops_per_token >= 4 * matmul_params(a.spec)


def test_time_and_money():
    f = Flops(seq_len=1, positions=1, keys=1, train_flops_per_seq=6 * 10**9, recompute_flops_per_seq=0)
    total = run_flops(f, 10**6, 3)
    assert total == 18 * 10**15
    hours = 18 * 10**15 / (2 * 10**12 * 0.5) / 3600
    assert rent_usd(hours, 2, 1.5) == pytest.approx(hours * 3.0)
    assert purchase_usd(4, 30_000) == 120_000
    assert break_even_runs(120_000, 40.0) == 3000
    assert break_even_runs(120_000, 0.0) is None


@pytest.mark.parametrize("tokens", [0, -5, 1.5, True, None])
def test_bad_tokens(tokens):
    with pytest.raises(PeftcalcError, match="--tokens"):
        check_run(tokens, 1)


@pytest.mark.parametrize("epochs", [0, -1, math.nan, math.inf, "2"])
def test_bad_epochs(epochs):
    with pytest.raises(PeftcalcError, match="--epochs"):
        check_run(1000, epochs)


@pytest.mark.parametrize("mfu", [0, -0.1, 1.01, math.nan, 40])
def test_bad_mfu(mfu):
    with pytest.raises(PeftcalcError, match="--mfu"):
        check_mfu(mfu)


def test_mfu_of_one_is_allowed():
    check_mfu(1.0)
    check_mfu(0.001)
