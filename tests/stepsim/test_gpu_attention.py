"""The GPU attention kernels of the replay (stepsim/families/layers.py gpu_attention) against the kernels' own
code, which cannot run here: what each saves for backward and what its backward allocates.

- FlashAttention-2 (flash_attn_interface.FlashAttnFunc.forward: ctx.save_for_backward(q, k, v, out_padded,
  softmax_lse, rng_state); csrc/flash_attn/flash_api.cpp mha_fwd: softmax_lse = empty({num_heads, total_q},
  float) per batch row) and its backward (mha_bwd: dq/dk/dv = empty_like, softmax_d = empty({b, h,
  seqlen_q_rounded}, float), dq_accum = empty({b, seqlen_q_rounded, h, head_size_rounded}, float), and for
  num_heads_k != num_heads dk_expanded/dv_expanded = empty({b, seqlen_k, h, head_size}));
- sdpa's memory-efficient kernel: the same plus the additive bias it is given.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from peftcalc.stepsim.engine import Sim
from peftcalc.stepsim.families.layers import gpu_attention
from peftcalc.stepsim.ops import Ops

from .harness import activation, predict

B, T, H, KV, D = 2, 256, 8, 2, 64  # T a multiple of 128: the kernels' rounded scratch equals T


def run(kernel: str, kv: int, dtype: str = "bf16", mask: bool = False):
    def make_inputs(sim: Sim):
        out = [activation(sim, ("B", H, "T", D), dtype), activation(sim, ("B", kv, "T", D), dtype),
               activation(sim, ("B", kv, "T", D), dtype)]
        if mask:
            out.append(activation(sim, ("B", 1, "T", "T"), dtype, requires_grad=False))
        return out

    def forward(ops: Ops, q, k, v, *bias):
        m = SimpleNamespace(f=ops, sim=ops.sim)
        return gpu_attention(m, q, k, v, H, kv, D, kernel, bias[0] if bias else None)

    return predict(make_inputs, forward, values={"B": B, "T": T, "S": T, "K": T, "P": 0})


@pytest.mark.parametrize("kv", [H, KV])
def test_flash_keeps_its_output_and_logsumexp(kv):
    m = run("flash", kv)
    out, lse = B * H * T * D * 2, B * H * T * 4
    assert m.saved_new == out + lse  # out_padded and softmax_lse (q, k, v are the caller's)
    assert m.saved_inputs == B * (H + 2 * kv) * T * D * 2
    grads = B * (H + 2 * kv) * T * D * 2
    scratch = B * H * T * 4 + B * T * H * D * 4 + (2 * B * T * H * D * 2 if kv != H else 0)
    # the backward's peak above its seed: dq, dk, dv, softmax_d, dq_accum and the expanded dk/dv
    assert m.backward_peak == grads + scratch


def test_efficient_kernel_keeps_the_bias():
    m = run("efficient", H, mask=True)
    assert m.saved_inputs == B * 3 * H * T * D * 2 + B * T * T * 2  # q, k, v and the float mask


def test_flex_has_no_fp32_accumulator():
    flash, flex = run("flash", H), run("flex", H)
    assert flash.saved_new == flex.saved_new
    assert flash.backward_peak - flex.backward_peak == B * T * H * D * 4  # dq_accum
