"""OPT as transformers 5 writes it (models/opt/modeling_opt.py): learned positions (offset 2, position ids
from a cumsum over a float ones mask), optional project_in/project_out (OPT-350m: 512-wide embeddings), pre-
or post-LayerNorm blocks (OPT-350m is post-LN), `q_proj(x) * scaling` (a new tensor), ReLU MLP, dropout 0.1
on the residual branches (attention dropout 0 by default).
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (causal_lm_loss, embedding_output, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import (activation, cfg, eager_softmax_attention, gpu_sdpa, layer_norm,
                                              sdpa_flash_masked, sdpa_math)
from peftcalc.stepsim.families.llama import causal_mask
from peftcalc.stepsim.model import Model


def attention(m: Model, x: Tensor, p: str, mask: Tensor | None) -> Tensor:
    f, a = m.f, m.arch
    H, d, h = a.num_heads, a.head_dim, a.hidden_size
    attn_p = float(cfg(m, "attention_dropout", default=0.0))
    q = f.view(f.scale(m.linear(x, p + "self_attn.q_proj", op="addmm")), ("B", H, "T", d))
    k = f.view(m.linear(x, p + "self_attn.k_proj", op="addmm"), ("B", H, "T", d))
    v = f.view(m.linear(x, p + "self_attn.v_proj", op="addmm"), ("B", H, "T", d))
    keys = "T"
    if m.ad.prefix_tokens:
        k, v = prefix_update(m, k, v, H, d)
        keys = "K"
    gpu = gpu_sdpa(m, q, k, v, H, H, d, keys, mask)
    if gpu is not None:
        o = f.view(gpu, ("B", "T", H, d))
    elif m.cfg.attention == "sdpa" and attn_p == 0 and mask is None:
        o = f.view(f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T")), ("B", "T", H, d))
    elif m.cfg.attention == "sdpa" and attn_p == 0:  # prefix tuning: a boolean (B, 1, T, K) mask, same kernel
        o = f.view(sdpa_flash_masked(m, q, k, v, ("B", H, "T", d), ("B", H, "T"), mask), ("B", "T", H, d))
    elif m.cfg.attention == "sdpa":
        o = sdpa_math(m, q, k, v, H, d, attn_p, causal=mask is None, k_len=keys, mask=mask,
                      kv_strided=not m.ad.prefix_tokens)
        o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    else:
        o = eager_softmax_attention(m, q, k, v, H, d, attn_p, mask, k_len=keys, upcast=True,
                                    kv_strided=not m.ad.prefix_tokens)
        o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    del q, k, v
    o = m.linear(f.view(o, ("B", "T", h)), p + "self_attn.out_proj", op="addmm")
    return m.adapter(o, "attn_adapter", p[:-1])


def layer(m: Model, x: Tensor, i: int, mask: Tensor | None) -> Tensor:
    f = m.f
    p = "model.decoder.layers.{i}."
    pre = bool(cfg(m, "do_layer_norm_before", default=True))
    drop = float(cfg(m, "dropout", default=0.1))
    residual = x
    h = layer_norm(m, x, p + "self_attn_layer_norm") if pre else x
    del x
    h = attention(m, h, p, mask)
    x = f.add(residual, f.dropout(h, drop))
    del h, residual
    if not pre:
        x = layer_norm(m, x, p + "self_attn_layer_norm")
    residual = x
    h = layer_norm(m, x, p + "final_layer_norm") if pre else x
    del x
    h = m.linear(h, p + "fc1", op="addmm")
    h = activation(m, h, str(cfg(m, "activation_function", default="relu")))
    h = m.linear(h, p + "fc2", op="addmm")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    x = f.add(residual, f.dropout(h, drop))
    del h, residual
    if not pre:
        x = layer_norm(m, x, p + "final_layer_norm")
    return x


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V, e = a.hidden_size, a.vocab_size, a.token_dim
    D = "model.decoder."
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_heads, a.head_dim)
    wte = m.weight(D + "embed_tokens.weight", (V, e))
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), e))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    sim.op = "position_ids"  # ones (B, T) float, cumsum, * mask - 1, .long()
    ones = sim.new(("B", "T"), "fp32")
    cs = sim.new(("B", "T"), "fp32")
    tmp = sim.new(("B", "T"), "fp32")
    del cs
    pos = sim.new(("B", "T"), "int64")
    del tmp
    positions = (a.max_positions or 2048) + 2
    pe = f.embedding(m.weight(D + "embed_positions.weight", (positions, h)), pos, h)
    m.keep += [ones, pos, x, pe]
    del ones
    if e != h:
        x = m.linear(x, D + "project_in")
    x = f.add(x, pe)
    del pe
    mask = causal_mask(m) if m.ad.prefix_tokens or m.cfg.attention == "eager" else None
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, k, q: layer(m, t, i, k), x, (mask, pos))
    del mask, pos
    if cfg(m, "do_layer_norm_before", default=True) and not cfg(m, "_remove_final_layer_norm", default=False):
        x = layer_norm(m, x, D + "final_layer_norm")
    if e != h:
        x = m.linear(x, D + "project_out")
    m.end_model()
    logits = f.linear(x, m.tied_head(D + "embed_tokens.weight", wte, (V, e)), None, V) if a.tie_embeddings else m.linear(x, "lm_head")
    m.outer.append(x)
    del x
    return causal_lm_loss(m, logits, V)
