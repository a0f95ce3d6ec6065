"""Falcon as transformers 5 writes it (models/falcon/modeling_falcon.py): fused query_key_value, multi-query
attention (one key/value head, taken out of the fused output by advanced indexing: copies), rotary
positions, parallel attention and MLP reading one LayerNorm (falcon-7b), GELU MLP, no dropout by default.

Attention with sdpa: keys and values have fewer heads than queries and no enable_gqa is passed, so the CPU
runs torch's math composite, which broadcasts them; its output is permuted and reshaped (a copy) for dense.
Eager: `q @ k^T`, `/= sqrt(d)`, softmax(scores + mask, dtype) (saved), `@ v`.
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (causal_lm_loss, embedding_output, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import cfg, gpu_sdpa, layer_norm, sdpa_flash_masked, sdpa_math
from peftcalc.stepsim.families.llama import causal_mask, rotary, rotate
from peftcalc.stepsim.model import Model


def attention(m: Model, x: Tensor, cos: Tensor, sin: Tensor, p: str, mask: Tensor | None) -> Tensor:
    f, a, sim = m.f, m.arch, m.sim
    H, d = a.num_heads, a.head_dim
    KV = a.num_kv_heads
    qkv = m.linear(x, p + "self_attention.query_key_value")
    q = f.slice(qkv, ("B", H, "T", d))
    if KV < H:  # _split_heads (multi-query): fused_qkv[..., [-2], :] and [..., [-1], :] index (copy)
        sim.op = "index"
        k = f.custom("IndexBackward0", [qkv], sim.new(("B", "T", KV, d), qkv.dtype), [])
        v = f.custom("IndexBackward0", [qkv], sim.new(("B", "T", KV, d), qkv.dtype), [])
        k, v = f.view(k, ("B", KV, "T", d)), f.view(v, ("B", KV, "T", d))
    else:
        k, v = f.slice(qkv, ("B", KV, "T", d)), f.slice(qkv, ("B", KV, "T", d))
    del qkv
    if not cfg(m, "alibi", default=False):
        q = rotate(m, q, cos, sin, H)
        k = rotate(m, k, cos, sin, KV)
    keys = "T"
    if m.ad.prefix_tokens:
        k, v = prefix_update(m, k, v, KV, d)
        keys = "K"
    gpu = gpu_sdpa(m, q, k, v, H, KV, d, keys, mask)
    if gpu is not None:
        o = gpu
    elif m.cfg.attention == "sdpa":
        if KV == H and mask is None:
            o = f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T"))
        elif KV == H:  # prefix tuning: a boolean (B, 1, T, K) mask, the same kernel
            o = sdpa_flash_masked(m, q, k, v, ("B", H, "T", d), ("B", H, "T"), mask)
        else:
            o = sdpa_math(m, q, k, v, H, d, 0.0, causal=mask is None, k_len=keys, mask=mask, strided=False)
    else:
        scores = f.matmul(q, k, ("B", H, "T", keys))
        scores = f.scale(scores, "div")
        if mask is not None:
            scores = f.add(scores, mask)
        probs = f.softmax(scores)
        del scores
        o = f.matmul(probs, v, ("B", H, "T", d))
        del probs
    del q, k, v
    o = f.copy(o, ("B", "T", H, d), "permute_reshape")
    return m.linear(f.view(o, ("B", "T", H * d)), p + "self_attention.dense")


def layer(m: Model, x: Tensor, i: int, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
    """FalconDecoderLayer.forward (parallel_attn, one LayerNorm; the non-parallel variant adds a second)."""
    f = m.f
    p = "transformer.h.{i}."
    parallel = bool(cfg(m, "parallel_attn", default=True))
    new_arch = bool(cfg(m, "new_decoder_architecture", default=False))
    residual = x
    if new_arch:
        ln_a = layer_norm(m, x, p + "ln_attn")
        ln_m = layer_norm(m, x, p + "ln_mlp")
    else:
        ln_a = layer_norm(m, x, p + "input_layernorm")
    del x
    att = attention(m, ln_a, cos, sin, p, mask)
    att = m.adapter(att, "attn_adapter", p[:-1])
    if not new_arch:
        if parallel:
            ln_m = ln_a
        else:
            residual = f.add(att, residual)
            ln_m = layer_norm(m, residual, p + "post_attention_layernorm")
    del ln_a
    h = m.linear(ln_m, p + "mlp.dense_h_to_4h")
    del ln_m
    h = f.unary_saves_input(h, "GeluBackward0", "gelu")
    h = m.linear(h, p + "mlp.dense_4h_to_h")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    if parallel or new_arch:
        h = f.add(h, att)  # mlp_output += attention_output (in place on a non-leaf: a new node, same storage)
    del att
    return f.add(h, residual)  # dropout_add with hidden_dropout 0


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_kv_heads, a.head_dim)
    wte = m.weight("transformer.word_embeddings.weight", (V, h))
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), h))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    mask = causal_mask(m) if m.ad.prefix_tokens or m.cfg.attention == "eager" else None
    cos, sin = rotary(m, x)
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, c, s, p, k: layer(m, t, i, c, s, k), x,
                  m.layer_args + (mask,))
    del mask
    x = layer_norm(m, x, "transformer.ln_f")
    m.end_model()
    logits = f.linear(x, m.tied_head("transformer.word_embeddings.weight", wte, (V, h)), None, V) if a.tie_embeddings else m.linear(x, "lm_head")
    m.outer.append(x)
    del x
    return causal_lm_loss(m, logits, V)
