"""Building blocks shared by the LayerNorm-era families (GPT-2, GPT-NeoX, OPT, BLOOM, Falcon, BERT, T5).

Each function mirrors one transformers module or torch composite and says which.
"""

from __future__ import annotations

from typing import Any

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.model import Model


def cfg(m: Model, *keys: str, default: Any = None) -> Any:
    """The first of `keys` present in the model's config.json, else `default` (transformers' default)."""
    for k in keys:
        v = m.spec.hf_config.get(k)
        if v is not None:
            return v
    return default


def layer_norm(m: Model, x: Tensor, name: str, bias: bool = True, width: int | None = None) -> Tensor:
    """nn.LayerNorm: native_layer_norm (output, mean and rstd; saves input, mean, rstd)."""
    h = width or m.arch.hidden_size
    w = m.weight(name + ".weight", (h,))
    b = m.weight(name + ".bias", (h,)) if bias else None
    return m.f.layer_norm(x, w, b)


def gelu_new(m: Model, x: Tensor) -> Tensor:
    """transformers NewGELUActivation (GPT-2's gelu_new), in Python: 0.5 * x * (1 + tanh(c * (x + 0.044715 *
    x^3))): pow (saves x), tanh (saves its result), and the final product (saves both factors)."""
    f = m.f
    half = f.scale(x)  # 0.5 * input
    cube = f.pow(x)
    t = f.scale(cube)
    del cube
    t2 = f.add(x, t)
    del t
    t3 = f.scale(t2)
    del t2
    th = f.unary_saves_output(t3, "TanhBackward0", "tanh")
    del t3
    one = f.add(th)
    del th
    return f.mul(half, one)


def activation(m: Model, x: Tensor, name: str) -> Tensor:
    """ACT2FN[name]: gelu_new/gelu_fast as Python formulas; gelu, gelu_pytorch_tanh, silu, relu as kernels."""
    f = m.f
    if name in ("gelu_new", "gelu_fast", "gelu_python_tanh"):
        return gelu_new(m, x)
    if name == "relu":
        return f.unary_saves_output(x, "ReluBackward0", "relu")
    if name in ("silu", "swish"):
        return f.unary_saves_input(x, "SiluBackward0", "silu")
    return f.unary_saves_input(x, "GeluBackward0", "gelu")


def _bmm_operand(m: Model, t: Tensor, strided: bool) -> Tensor:
    """ATen's matmul views a (B, H, ...) operand as (B*H, ...): free for a batch of one, a copy (saved by the
    bmm) for B > 1 when the operand is a head-major view of token-major data."""
    return m.f.copy(t, op="matmul_reshape") if strided and not m.cfg.batch1 else t


def _broadcast_operand(m: Model, t: Tensor, heads: int) -> Tensor | None:
    """Keys or values with fewer heads than the queries (multi-query attention passed to sdpa without
    enable_gqa): ATen's matmul broadcasts them over the heads, expand + reshape to (B*H, ...), a view for a batch
    of one and a copy of every head for B > 1 (saved by the bmm). None when the heads match."""
    if t.shape[1] == heads:
        return None
    full = (t.shape[0], heads, *t.shape[2:])
    wide = m.f.expand(t, full)
    return wide if m.cfg.batch1 else m.f.copy(wide, op="matmul_reshape")


def sdpa_math(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, d: int, dropout: float, causal: bool,
              q_len: str = "T", k_len: str = "T", mask: Tensor | None = None, strided: bool = True,
              kv_strided: bool | None = None) -> Tensor:
    """torch's `_scaled_dot_product_attention_math`, the CPU path when dropout is on: bf16/fp16 inputs are
    upcast to fp32 first (q, k, v copies; the output is cast back), q * sqrt(scale), k^T * sqrt(scale) (both
    saved by the matmul), the causal mask (ones().tril(), then a float `where`, per call), scores, + mask,
    `_safe_softmax` (saved), dropout (noise saved), @ v; the output and the probabilities cast back (the
    latter dropped)."""
    f = m.f
    v, k = f.cast(v), f.cast(k)  # sdpa is an autocast op: under amp its inputs are cast first (right to left)
    q = f.cast(q)
    autocast, f.autocast = f.autocast, None  # ... and the composite's own operators run below autocast
    try:
        return _sdpa_math(m, q, k, v, H, d, dropout, causal, q_len, k_len, mask, strided, kv_strided)
    finally:
        f.autocast = autocast


def _sdpa_math(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, d: int, dropout: float, causal: bool,
               q_len: str, k_len: str, mask: Tensor | None, strided: bool, kv_strided: bool | None) -> Tensor:
    f, sim = m.f, m.sim
    dtype = q.dtype
    if dtype != "fp32":
        q, k, v = f.to(q, "fp32"), f.to(k, "fp32"), f.to(v, "fp32")
    qs = f.scale(q)
    fmask = None
    if causal and mask is None:
        sim.op = "tril"
        ones = sim.new((q_len, k_len), "bool")
        tri = sim.new((q_len, k_len), "bool")
        del ones
        sim.op = "where"
        fmask = sim.new((q_len, k_len), q.dtype)
        del tri
    ks = f.scale(k)
    kv_strided = strided if kv_strided is None else kv_strided
    qm, km = _bmm_operand(m, qs, strided), _broadcast_operand(m, ks, H) or _bmm_operand(m, ks, kv_strided)
    scores = f.matmul(qm, km, ("B", H, q_len, k_len))
    del ks, qm, km  # the scaled query is a local of the C++ function: it lives until the function returns
    if fmask is not None or mask is not None:
        scores = f.add(scores, fmask if fmask is not None else mask)
    probs = f.softmax(scores)
    del scores
    probs = f.dropout(probs, dropout)
    vm = _broadcast_operand(m, v, H) or _bmm_operand(m, v, kv_strided)
    # `return make_tuple(matmul(attn, v).to(origin_dtype), attn.to(origin_dtype))`: arguments evaluated right
    # to left, so the probabilities' low-precision copy (dropped by the caller) comes first; every local
    # (the fp32 q, k, v, the scaled query, the mask) lives until the function returns
    probs_low = f.to(probs, dtype)
    out = f.matmul(probs, vm, ("B", H, q_len, d))
    result = f.to(out, dtype)
    del out, probs_low, probs, fmask, q, k, v, qs, vm
    return result


def sdpa_flash_masked(m: Model, q: Tensor, k: Tensor, v: Tensor, out_shape: tuple, lse_shape: tuple,
                      mask: Tensor) -> Tensor:
    """F.scaled_dot_product_attention with a boolean mask and no dropout on the CPU: the flash kernel, after
    sdpa turns the mask into a float one (convert_boolean_attn_mask: logical_not, where), which the kernel
    saves."""
    f, sim = m.f, m.sim
    v, k = f.cast(v), f.cast(k)  # under amp the autocast wrapper casts first (right to left) ...
    q = f.cast(q)
    sim.op = "logical_not"  # ... then sdpa converts the mask to the query's dtype
    inv = sim.new(mask.shape, "bool")
    sim.op = "where"
    fmask = sim.new(mask.shape, q.dtype)
    del inv
    return f.sdpa_flash_cpu(q, k, v, out_shape, lse_shape, fmask)


def eager_softmax_attention(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, d: int, dropout: float,
                            mask: Tensor | None, q_len: str = "T", k_len: str = "T", upcast: bool = False,
                            strided: bool = True, kv_strided: bool | None = None) -> Tensor:
    """The eager attention of GPT-2/OPT/BERT-style models: matmul(q, k^T) * scaling (+ mask), softmax
    (in the input dtype; `upcast`: dtype=fp32, then cast back), dropout, @ v."""
    f = m.f
    kv_strided = strided if kv_strided is None else kv_strided
    qm, km = _bmm_operand(m, q, strided), _bmm_operand(m, k, kv_strided)
    scores = f.matmul(qm, km, ("B", H, q_len, k_len))
    del qm, km
    scores = f.scale(scores)
    if mask is not None:
        scores = f.add(scores, mask)
    probs = f.softmax(scores, "fp32" if upcast else None)
    del scores
    probs = f.to(probs, q.dtype)
    probs = f.dropout(probs, dropout)
    return f.matmul(probs, _bmm_operand(m, v, kv_strided), ("B", H, q_len, d))


# -- the GPU's fused attention kernels ------------------------------------------------------------------------
# What each keeps for backward (none materialises the (T, K) score matrix):
# - PyTorch sdpa's flash kernel (`_scaled_dot_product_flash_attention`, aten/src/ATen/native/transformers/cuda/
#   attention.cu; the FlashAttention-2 code vendored from Dao-AILab/flash-attention) and transformers'
#   `flash_attention_2` (flash_attn_interface.FlashAttnFunc: ctx.save_for_backward(q, k, v, out_padded,
#   softmax_lse, rng_state)): q, k, v, the output and the row logsumexp (B, H, T) in fp32; grouped-query heads
#   natively (k, v keep their KV heads). Backward, csrc/flash_attn/flash_api.cpp `mha_bwd`: dq, dk, dv
#   (empty_like), softmax_d (B, H, T) fp32 and dq_accum (B, T, H, d rounded to 32) fp32, and for grouped heads
#   dk_expanded and dv_expanded (B, T, H, d) summed into dk, dv; the scratch dies with the call.
# - sdpa's memory-efficient kernel (`_scaled_dot_product_efficient_attention`), which sdpa picks when a mask is
#   given or the inputs are fp32: saves q, k, v, the additive bias (the float mask), the output and logsumexp;
#   backward (`_efficient_attention_backward`) grad_q, grad_k, grad_v, delta (B, H, T) fp32 and a fp32 grad_q
#   accumulator (modelled as flash's dq_accum).
# - flex_attention (torch/_higher_order_ops/flex_attention.py, FlexAttentionAutogradOp): saves q, k, v, the
#   output, logsumexp (B, H, T) fp32 and the block mask's small index tensors; backward dq, dk, dv and delta
#   (B, H, T) fp32.
# The sequence rounding of the scratch (to 128 rows) and of the efficient kernel's logsumexp (to 32) is left out:
# under 128 rows of a (B, H, d) slice.
GPU_KERNELS = ("flash", "efficient", "flex")


def gpu_attention(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, kernel: str = "flash",
                  mask: Tensor | None = None, q_len: str = "T", k_len: str = "T") -> Tensor:
    """One fused attention call on CUDA: output (B, H, q_len, d) in the query's dtype (token-major, so the
    caller's transpose(1, 2).contiguous() is a view), logsumexp (B, H, q_len) fp32; see GPU_KERNELS above."""
    if kernel not in GPU_KERNELS:
        raise ValueError(f"unknown GPU attention kernel {kernel!r}")
    f, sim = m.f, m.sim
    v, k = f.cast(v), f.cast(k)  # autocast casts right to left (ops.Ops.cast)
    q = f.cast(q)
    sim.op = f"{kernel}_attention"
    out = sim.new(("B", H, q_len, d), q.dtype)
    lse = sim.new(("B", H, q_len), "fp32")
    saved = [q, k, v, out, lse] + ([mask] if kernel == "efficient" and mask is not None else [])
    node = sim.node(f"{kernel.capitalize()}AttentionBackward0", [q, k, v], saved, _gpu_attention_backward(kernel, H, KV, d,
                                                                                                        q_len, k_len))
    del lse
    if node is not None:
        out.node, out.requires_grad = node, True
    return out


def _gpu_attention_backward(kernel: str, H: int, KV: int, d: int, q_len: str, k_len: str):
    d_rounded = -(-d // 32) * 32 if d <= 192 else 256

    def backward(sim, n, g: list) -> list:
        grads = [sim.new(meta[0], meta[1]) if meta is not None and edge is not None else None
                 for meta, edge in zip(n.inputs, n.next)]
        dtype = n.inputs[0][1]
        scratch = [sim.new(("B", H, q_len), "fp32")]  # softmax_d / delta
        if kernel != "flex":
            scratch.append(sim.new(("B", q_len, H, d_rounded), "fp32"))  # dq_accum
        if KV != H and kernel == "flash":
            scratch += [sim.new(("B", k_len, H, d), dtype), sim.new(("B", k_len, H, d), dtype)]  # dk/dv_expanded
        del scratch
        return grads
    return backward


def gpu_sdpa(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, keys: str = "T",
             mask: Tensor | None = None) -> Tensor | None:
    """On CUDA, the fused kernel torch's sdpa (or flash_attention_2 / flex_attention) runs for a family whose CPU
    path is the math composite (dropout inside the attention: the CUDA kernels draw it from a Philox seed and keep
    no mask); None on the CPU or with eager attention, where the family's own path applies. Without a mask and in
    bf16/fp16 the flash kernel, else the memory-efficient one with the mask as a float bias (converted per call);
    grouped heads without enable_gqa are repeated first (a copy)."""
    if m.cfg.device != "cuda" or m.cfg.attention == "eager":
        return None
    if m.cfg.attention == "flex_attention":
        return gpu_attention(m, q, k, v, H, KV, d, "flex", k_len=keys)
    if m.cfg.attention == "flash_attention_2" or (mask is None and m.cfg.compute_dtype != "fp32" and d <= 256):
        return gpu_attention(m, q, k, v, H, KV, d, "flash", k_len=keys)
    f, sim = m.f, m.sim
    if KV != H:
        k = f.copy(f.expand(k, ("B", KV, H // KV, keys, d)), ("B", H, keys, d), "repeat_kv")
        v = f.copy(f.expand(v, ("B", KV, H // KV, keys, d)), ("B", H, keys, d), "repeat_kv")
    fmask = None
    if mask is not None:
        sim.op = "where"
        fmask = sim.new(mask.shape, m.cfg.compute_dtype)
    return gpu_attention(m, q, k, v, H, H, d, "efficient", fmask, k_len=keys)
