"""The kernels of a step read off the replay, against independent counts: Kaplan's 2N per token forward and the mm
derivative's two products (compute.py counts them from the weight inventory, the replay from the calls the transformers
and peft code makes), FlashAttention-2's benchmark FLOPs formula, bitsandbytes' dequantization traffic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peftcalc.compute import head_matmul_params, matmul_params
from peftcalc.estimate import adapt
from peftcalc.kernels import DEQUANT_TRAFFIC, step_kernels
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup

SPEC = get_model("llama-3.1-8b")
N = matmul_params(SPEC)
HEAD = head_matmul_params(SPEC)
SETUP = Setup(precision="bf16-true", batch_size=2, seq_len=2048)
TOKENS = 2 * 2048
A = SPEC.arch


def kernels(method: str, setup: Setup = SETUP, **options):
    return step_kernels(adapt(SPEC, make_method(method, MethodOptions(**options))), setup)


def test_full_training_is_2n_forward_and_4n_backward():
    k = kernels("full")
    assert k.forward.gemm_flops == 2 * N * TOKENS
    # input and weight gradients of every linear, except the first block's q/k/v input gradient (the embedding's
    # output needs one: the embedding trains)
    assert k.backward.gemm_flops == 4 * N * TOKENS


def test_checkpointing_recomputes_the_blocks_not_the_head():
    plain, ckpt = kernels("full"), kernels("full", replace(SETUP, gradient_checkpointing=True))
    assert ckpt.forward.gemm_flops == plain.forward.gemm_flops
    assert ckpt.backward.gemm_flops - plain.backward.gemm_flops == 2 * (N - HEAD) * TOKENS


def test_lora_runs_no_weight_gradient_products_for_frozen_weights():
    """Forward 2N plus the adapters' 2 per parameter; backward the input gradients (2N, less the first block's q, k
    and v whose input is the frozen embedding's) and the adapters' products."""
    lora = adapt(SPEC, make_method("lora"))
    trainable = lora.params.trainable
    k = kernels("lora")
    assert k.forward.gemm_flops == (2 * N + 2 * trainable) * TOKENS
    first_qkv = 2 * A.hidden_size * (A.num_heads + 2 * A.num_kv_heads) * A.head_dim * TOKENS
    base_backward = 2 * N * TOKENS - first_qkv
    assert base_backward < k.backward.gemm_flops < base_backward + 6 * trainable * TOKENS
    assert k.backward.gemm_flops < kernels("full").backward.gemm_flops / 1.9


def test_attention_is_flash_attention_2s_count():
    """flash-attention benchmarks: forward 4 x batch x seqlen^2 x nheads x headdim, halved when causal; backward
    2.5 x the forward; per layer."""
    forward = 4 * 2 * 2048 * 2048 * A.num_heads * A.head_dim // 2 * A.num_layers
    k = kernels("full")
    assert k.forward.attention_flops == forward
    assert k.backward.attention_flops == 2.5 * forward


def test_prompt_tokens_lengthen_every_product():
    k = kernels("prompt", virtual_tokens=200)
    assert k.forward.gemm_flops == 2 * N * 2 * (2048 + 200)


def test_qlora_dequantizes_each_weight_before_each_product():
    """bitsandbytes' blockwise dequantize reads half a byte per 4-bit weight and writes two: 1.25 x the 16-bit
    weight, in forward and again in backward for the input gradient."""
    q = adapt(SPEC, make_method("qlora"))
    quantized = sum(g.total for g in q.tensors if g.format != "dense")
    k = kernels("qlora")
    assert k.forward.dequantize_bytes == pytest.approx(DEQUANT_TRAFFIC["nf4"] * 2 * quantized, rel=1e-6)
    # layer 0's q, k, v take the frozen embedding's output: no input gradient there, no second dequantization
    assert 0.95 * k.forward.dequantize_bytes < k.backward.dequantize_bytes <= k.forward.dequantize_bytes
    assert kernels("lora").forward.dequantize_bytes == 0


def test_fusion_moves_less_than_eager_operators():
    for method in ("full", "lora", "qlora"):
        for phase in kernels(method).phases:
            assert 0 < phase.fused_bytes < phase.pointwise_bytes
            assert phase.extern_calls < phase.launches


def test_kernels_scale_with_the_tokens():
    small, big = kernels("full"), kernels("full", Setup(precision="bf16-true", batch_size=4, seq_len=2048))
    assert big.forward.gemm_flops == 2 * small.forward.gemm_flops
    assert big.forward.launches == small.forward.launches  # the same operators, larger
