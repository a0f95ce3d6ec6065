"""BLOOM as transformers 5 writes it (models/bloom/modeling_bloom.py), eager attention only (ALiBi): an
embedding LayerNorm, fused query_key_value viewed as (B*H, T, d) (ATen copies for B > 1), scores by
`alibi.baddbmm(q, k^T)`, + the float causal mask, softmax(dtype=fp32) (saved) and its cast back (saved by the
bmm with v), merge_heads (a copy), dense + residual; GELU through BLOOM's own autograd Function (saves its
input; its Python formula's temporaries in forward and backward).
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (causal_lm_loss, embedding_output, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import cfg, layer_norm
from peftcalc.stepsim.model import Model


def bloom_gelu(m: Model, x: Tensor) -> Tensor:
    """GeLUFunction: saves x; forward x * 0.5 * (1 + tanh(0.79788456 * x * (1 + 0.044715 * x * x))) without
    grad (temporaries of x's size); backward bloom_gelu_back (about six of them) and the result."""
    sim = m.sim
    was = sim.grad_enabled
    sim.grad_enabled = False
    sim.op = "bloom_gelu"
    a = sim.new(x.shape, x.dtype)  # x * 0.5, kept until the last product
    t = [sim.new(x.shape, x.dtype) for _ in range(3)]  # the inner products (measured: four alive at once)
    del t
    out = sim.new(x.shape, x.dtype)
    del a
    sim.grad_enabled = was
    node = sim.node("GeLUFunctionBackward", [x], [x], _bw_bloom_gelu)
    if node is not None:
        out.node, out.requires_grad = node, True
    return out


def _bw_bloom_gelu(sim, n, g: list) -> list:
    shape, dtype = n.inputs[0]
    t = [sim.new(shape, dtype) for _ in range(5)]  # tanh_out, 1 - tanh^2 and the factors (measured: five alive)
    del t[1:]
    ff = sim.new(shape, dtype)
    del t
    out = sim.new(shape, dtype)  # ff * g
    del ff
    return [out]


def attention(m: Model, x: Tensor, residual: Tensor, alibi: Tensor, mask: Tensor, p: str) -> Tensor:
    f, a = m.f, m.arch
    H, d, h = a.num_heads, a.head_dim, a.hidden_size
    qkv = m.linear(x, p + "self_attention.query_key_value", op="addmm")
    q, k, v = (f.slice(qkv, ("B", H, "T", d)) for _ in range(3))
    del qkv
    keys = "T"
    if m.ad.prefix_tokens:
        k, v = prefix_update(m, k, v, H, d)
        keys = "K"
    strided = not m.cfg.batch1
    if strided:  # reshape(batch * heads, -1, head_dim) of a head-major view: a copy for B > 1
        q = f.copy(q, op="reshape")
        if not m.ad.prefix_tokens:
            k, v = f.copy(k, op="reshape"), f.copy(v, op="reshape")
    scores = f.matmul(q, k, ("B", H, "T", keys), op="baddbmm")  # alibi.baddbmm(q, k^T)
    del q, k
    scores = f.add(scores, mask)
    probs = f.softmax(scores, "fp32")
    del scores
    probs = f.to(probs, x.dtype)
    probs = f.dropout(probs, float(cfg(m, "attention_dropout", default=0.0)))
    ctx = f.matmul(probs, v, ("B", H, "T", d))
    del probs, v
    ctx = f.copy(ctx, ("B", "T", H, d), "merge_heads")
    out = m.linear(f.view(ctx, ("B", "T", h)), p + "self_attention.dense", op="addmm")
    del ctx
    out = m.adapter(out, "attn_adapter", p[:-1])
    return f.add(f.dropout(out, float(cfg(m, "hidden_dropout", default=0.0))), residual)


def block(m: Model, x: Tensor, i: int, alibi: Tensor, mask: Tensor) -> Tensor:
    f = m.f
    p = "transformer.h.{i}."
    ln = layer_norm(m, x, p + "input_layernorm")
    att = attention(m, ln, x, alibi, mask, p)
    del ln, x
    ln = layer_norm(m, att, p + "post_attention_layernorm")
    h = m.linear(ln, p + "mlp.dense_h_to_4h", op="addmm")
    del ln
    h = bloom_gelu(m, h)
    h = m.linear(h, p + "mlp.dense_4h_to_h", op="addmm")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    return f.add(f.dropout(h, float(cfg(m, "hidden_dropout", default=0.0))), att)


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_heads, a.head_dim)
    wte = m.weight("transformer.word_embeddings.weight", (V, h))
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), h))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    keys = "K" if m.ad.prefix_tokens else "T"
    sim.op = "alibi"
    alibi = sim.new(("B", a.num_heads, 1, keys), m.cfg.compute_dtype)  # build_alibi_tensor
    mask = sim.new(("B", 1, "T", keys), m.cfg.compute_dtype)  # the eager causal mask
    m.keep += [alibi, mask]
    x = layer_norm(m, x, "transformer.word_embeddings_layernorm")
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, al, mk: block(m, t, i, al, mk), x, (alibi, mask))
    del alibi, mask
    x = layer_norm(m, x, "transformer.ln_f")
    m.end_model()
    logits = f.linear(x, m.tied_head("transformer.word_embeddings.weight", wte, (V, h)), None, V) if a.tie_embeddings else m.linear(x, "lm_head")
    m.outer.append(x)
    del x
    return causal_lm_loss(m, logits, V)
