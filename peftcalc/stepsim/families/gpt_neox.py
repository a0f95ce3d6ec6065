"""GPT-NeoX (Pythia) as transformers 5 writes it (models/gpt_neox/modeling_gpt_neox.py): fused
query_key_value viewed (B, H, T, 3d) and chunked (views), partial rotary embedding (the rotated part and the
pass-through part concatenated: new contiguous q and k), parallel residual (mlp + attn + x), LayerNorm,
GELU, untied embed_out. The sdpa output follows the contiguous query's layout, so `transpose(1, 2)
.contiguous()` copies it.
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (causal_lm_loss, embedding_output, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import (activation, cfg, eager_softmax_attention, gpu_sdpa, layer_norm,
                                              sdpa_flash_masked)
from peftcalc.stepsim.families.llama import causal_mask
from peftcalc.stepsim.model import Model


def rotary_dim(m: Model) -> int:
    c = m.spec.hf_config
    rp = c.get("rope_parameters") or {}
    pct = float(c.get("rotary_pct", rp.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25))))
    return int(m.arch.head_dim * pct)


def rotary(m: Model) -> tuple[Tensor, Tensor, Tensor]:
    """GPTNeoXRotaryEmbedding: as Llama's, over the rotary dimensions only: cos and sin (1, T, rotary_dim)."""
    sim = m.sim
    rd = rotary_dim(m)
    sim.op = "rotary"
    pos = sim.new((1, "T"), "int64")
    t = [sim.new((1, "T", 1), "fp32"), sim.new((1, "T", rd // 2), "fp32"), sim.new((1, "T", rd), "fp32")]
    cos = sim.new((1, "T", rd), "fp32")
    sin = sim.new((1, "T", rd), "fp32")
    del t
    cos, sin = m.f.to(cos, m.cfg.compute_dtype), m.f.to(sin, m.cfg.compute_dtype)
    m.keep.append(pos)
    return cos, sin, pos


def attention(m: Model, x: Tensor, cos: Tensor, sin: Tensor, p: str, mask: Tensor | None) -> Tensor:
    f, a = m.f, m.arch
    H, d, h = a.num_heads, a.head_dim, a.hidden_size
    rd = rotary_dim(m)
    qkv = m.linear(x, p + "attention.query_key_value", op="addmm" if m.spec_linear(p + "attention.query_key_value").bias else "mm")
    q, k, v = (f.slice(qkv, ("B", H, "T", d)) for _ in range(3))
    del qkv
    qr, kr = f.slice(q, ("B", H, "T", rd)), f.slice(k, ("B", H, "T", rd))
    qp, kp = f.slice(q, ("B", H, "T", d - rd)), f.slice(k, ("B", H, "T", d - rd))
    del q, k
    q = f.cat([_rot(m, qr, cos, sin, H, rd), qp], ("B", H, "T", d))
    k = f.cat([_rot(m, kr, cos, sin, H, rd), kp], ("B", H, "T", d))
    del qr, kr, qp, kp
    keys = "T"
    if m.ad.prefix_tokens:
        k, v = prefix_update(m, k, v, H, d)
        keys = "K"
    attn_p = float(cfg(m, "attention_dropout", default=0.0))
    gpu = gpu_sdpa(m, q, k, v, H, H, d, keys, mask)
    if gpu is not None:
        o = gpu
    elif m.cfg.attention == "sdpa" and mask is None and attn_p == 0:
        o = f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T"))
    elif m.cfg.attention == "sdpa" and attn_p == 0:  # prefix tuning: a boolean (B, 1, T, K) mask, same kernel
        o = sdpa_flash_masked(m, q, k, v, ("B", H, "T", d), ("B", H, "T"), mask)
    else:
        o = eager_softmax_attention(m, q, k, v, H, d, attn_p, mask, k_len=keys, upcast=True, strided=False,
                                    kv_strided=not m.ad.prefix_tokens)
    del q, k, v
    o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    return m.linear(f.view(o, ("B", "T", h)), p + "attention.dense",
                    op="addmm" if m.spec_linear(p + "attention.dense").bias else "mm")


def _rot(m: Model, t: Tensor, cos: Tensor, sin: Tensor, heads: int, rd: int) -> Tensor:
    f = m.f
    a = f.mul(t, cos)
    x1, x2 = f.slice(t, ("B", heads, "T", rd // 2)), f.slice(t, ("B", heads, "T", rd // 2))
    rot = f.cat([f.neg(x2), x1], ("B", heads, "T", rd))
    del x1, x2
    b = f.mul(rot, sin)
    del rot
    return f.add(a, b)


def layer(m: Model, x: Tensor, i: int, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
    f = m.f
    p = "gpt_neox.layers.{i}."
    att = attention(m, layer_norm(m, x, p + "input_layernorm"), cos, sin, p, mask)
    att = m.adapter(att, "attn_adapter", p[:-1])
    act = str(cfg(m, "hidden_act", default="gelu"))
    if cfg(m, "use_parallel_residual", default=True):
        h = m.linear(layer_norm(m, x, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h", op="addmm")
        h = m.linear(activation(m, h, act), p + "mlp.dense_4h_to_h", op="addmm")
        h = m.adapter(h, "ffn_adapter", p[:-1])
        s = f.add(h, att)
        del h, att
        return f.add(s, x)
    att = f.add(att, x)
    del x
    h = m.linear(layer_norm(m, att, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h", op="addmm")
    h = m.linear(activation(m, h, act), p + "mlp.dense_4h_to_h", op="addmm")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    return f.add(h, att)


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_heads, a.head_dim)
    wte = m.weight("gpt_neox.embed_in.weight", (V, h))
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), h))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    mask = causal_mask(m) if m.ad.prefix_tokens or m.cfg.attention == "eager" else None
    cos, sin, pos = rotary(m)
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, c, s, p, k: layer(m, t, i, c, s, k), x,
                  (cos, sin, pos, mask))
    del mask, pos
    x = layer_norm(m, x, "gpt_neox.final_layer_norm")
    m.end_model()
    logits = f.linear(x, m.tied_head("gpt_neox.embed_in.weight", wte, (V, h)), None, V) if a.tie_embeddings else m.linear(x, "lm_head")
    m.outer.append(x)
    del x
    return causal_lm_loss(m, logits, V)
