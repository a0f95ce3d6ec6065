"""GPT-2 as transformers 5 writes it (models/gpt2/modeling_gpt2.py): learned positions, pre-LayerNorm blocks,
fused c_attn (Conv1D: addmm with the weight as in x out), gelu_new in Python, dropout everywhere (0.1 by
default: attention probabilities, residual branches, embeddings), tied head.

Attention: sdpa with dropout on runs torch's math composite on the CPU (the flash kernel takes no
dropout); eager is GPT2's eager_attention_forward. The attention output `transpose(1, 2).contiguous()` copies.
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (causal_lm_loss, embedding_output, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import (activation, cfg, eager_softmax_attention, gpu_sdpa, layer_norm,
                                              sdpa_math)
from peftcalc.stepsim.model import Model


def attention(m: Model, x: Tensor, p: str, mask: Tensor | None) -> Tensor:
    f, a = m.f, m.arch
    H, d, h = a.num_heads, a.head_dim, a.hidden_size
    attn_p = float(cfg(m, "attn_pdrop", default=0.1))
    qkv = m.linear(x, p + "attn.c_attn", op="addmm")
    q, k, v = (f.slice(qkv, ("B", H, "T", d)) for _ in range(3))
    del qkv
    prefix = bool(m.ad.prefix_tokens)
    if prefix:
        k, v = prefix_update(m, k, v, H, d)
    keys = "K" if prefix else "T"
    o = gpu_sdpa(m, q, k, v, H, H, d, keys, mask if prefix else None)
    if o is not None:  # the CUDA kernels: token-major output, contiguous() is free
        o = f.view(o, ("B", "T", H, d))
    elif m.cfg.attention == "sdpa":
        if attn_p == 0 and not prefix:
            o = f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T"))
            o = f.view(o, ("B", "T", H, d))  # token-major views in, token-major output: contiguous() is free
        else:
            if prefix:  # a boolean mask: sdpa turns it into a float one
                m.sim.op = "where"
                fmask = m.sim.new(mask.shape, q.dtype if q.dtype == "fp32" else "fp32")
            o = sdpa_math(m, q, k, v, H, d, attn_p, causal=not prefix, k_len=keys,
                          mask=fmask if prefix else None, kv_strided=not prefix)
            o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    else:
        o = eager_softmax_attention(m, q, k, v, H, d, attn_p, mask, k_len=keys, kv_strided=not prefix)
        o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    del q, k, v
    o = m.linear(f.view(o, ("B", "T", h)), p + "attn.c_proj", op="addmm")
    o = m.adapter(o, "attn_adapter", p[:-1])
    return f.dropout(o, float(cfg(m, "resid_pdrop", default=0.1)))


def mlp(m: Model, x: Tensor, p: str) -> Tensor:
    f = m.f
    h = m.linear(x, p + "mlp.c_fc", op="addmm")
    h = activation(m, h, cfg(m, "activation_function", default="gelu_new"))
    h = m.linear(h, p + "mlp.c_proj", op="addmm")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    return f.dropout(h, float(cfg(m, "resid_pdrop", default=0.1)))


def block(m: Model, x: Tensor, i: int, mask: Tensor | None) -> Tensor:
    p = "transformer.h.{i}."
    residual = x
    h = layer_norm(m, x, p + "ln_1")
    del x
    h = attention(m, h, p, mask)
    x = m.f.add(h, residual)
    del h, residual
    residual = x
    h = layer_norm(m, x, p + "ln_2")
    del x
    h = mlp(m, h, p)
    return m.f.add(residual, h)


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    wte = m.weight("transformer.wte.weight", (V, h))
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_heads, a.head_dim)
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), h))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    sim.op = "position_ids"
    pos = sim.new(("T",), "int64")
    pe = f.embedding(m.weight("transformer.wpe.weight", (a.max_positions or 1024, h)), pos, h)
    m.keep.append(pos)
    m.keep += [x, pe]  # inputs_embeds and position_embeds: locals of GPT2Model.forward
    x = f.add(x, pe)
    del pe
    x = f.dropout(x, float(cfg(m, "embd_pdrop", default=0.1)))
    m.mask = eager_mask(m) if m.cfg.attention == "eager" or m.ad.prefix_tokens else None
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, k, q: block(m, t, i, k), x, (m.mask, pos))
    del pos
    x = layer_norm(m, x, "transformer.ln_f")
    m.end_model()
    logits = f.linear(x, m.tied_head("transformer.wte.weight", wte, (V, h)), None, V) if a.tie_embeddings else m.linear(x, "lm_head")
    m.outer.append(x)
    del x
    return causal_lm_loss(m, logits, V)


def eager_mask(m: Model) -> Tensor:
    """masking_utils.create_causal_mask for eager attention: a float (B, 1, T, T) mask in the model dtype,
    alive until the base model's forward returns (kept longer by checkpointed layers, which receive it)."""
    m.sim.op = "causal_mask"
    keys = "K" if m.ad.prefix_tokens else "T"
    mask = m.sim.new(("B", 1, "T", keys), m.cfg.compute_dtype if m.cfg.attention == "eager" else "bool")
    m.keep.append(mask)
    return mask
