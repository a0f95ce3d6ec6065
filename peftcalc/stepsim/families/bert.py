"""BERT / RoBERTa with their masked-LM head, as transformers 5 writes them (models/bert/modeling_bert.py,
models/roberta): embeddings (word + token type + position, LayerNorm, dropout), post-LayerNorm blocks
(attention, dense, dropout, LayerNorm(x + input); intermediate GELU; output dense, dropout, LayerNorm), the
MLM head (dense, GELU, LayerNorm, tied decoder + bias), and the loss over every token (the measured step
labels all of them). Dropout 0.1 by default, attention probabilities included: sdpa runs torch's math
composite on the CPU.
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import embedding_output, prefix_cache, prefix_update, prompt_inputs, run_stack
from peftcalc.stepsim.families.layers import (activation, cfg, eager_softmax_attention, gpu_sdpa, layer_norm,
                                              sdpa_math)
from peftcalc.stepsim.model import Model


def prefix_of(m: Model) -> str:
    return "roberta." if m.arch.family == "roberta" else "bert."


def attention(m: Model, x: Tensor, p: str) -> Tensor:
    f, a = m.f, m.arch
    H, d, h = a.num_heads, a.head_dim, a.hidden_size
    q = f.view(m.linear(x, p + "attention.self.query", op="addmm"), ("B", H, "T", d))
    k = f.view(m.linear(x, p + "attention.self.key", op="addmm"), ("B", H, "T", d))
    v = f.view(m.linear(x, p + "attention.self.value", op="addmm"), ("B", H, "T", d))
    attn_p = float(cfg(m, "attention_probs_dropout_prob", default=0.1))
    keys = "T"
    if m.ad.prefix_tokens:  # estimated as a cache prepended to the keys (not measured for encoders)
        k, v = prefix_update(m, k, v, H, d)
        keys = "K"
    o = gpu_sdpa(m, q, k, v, H, H, d, keys)
    if o is not None:  # the CUDA kernels (dropout inside, no mask kept): token-major output
        o = f.view(o, ("B", "T", H, d))
    elif m.cfg.attention == "sdpa" and attn_p == 0 and not m.ad.prefix_tokens:
        o = f.view(f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T")), ("B", "T", H, d))
    else:
        if m.cfg.attention == "sdpa":
            o = sdpa_math(m, q, k, v, H, d, attn_p, causal=False, k_len=keys, kv_strided=not m.ad.prefix_tokens)
        else:
            o = eager_softmax_attention(m, q, k, v, H, d, attn_p, None, k_len=keys, kv_strided=not m.ad.prefix_tokens)
        o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    del q, k, v
    return f.view(o, ("B", "T", h))


def layer(m: Model, x: Tensor, i: int) -> Tensor:
    f = m.f
    p = prefix_of(m) + "encoder.layer.{i}."
    drop = float(cfg(m, "hidden_dropout_prob", default=0.1))
    a = attention(m, x, p)
    a = m.linear(a, p + "attention.output.dense", op="addmm")
    a = m.adapter(a, "attn_adapter", p[:-1])
    a = f.add(f.dropout(a, drop), x)
    del x
    a = layer_norm(m, a, p + "attention.output.LayerNorm")
    h = m.linear(a, p + "intermediate.dense", op="addmm")
    h = activation(m, h, str(cfg(m, "hidden_act", default="gelu")))
    h = m.linear(h, p + "output.dense", op="addmm")
    h = m.adapter(h, "ffn_adapter", p[:-1])
    h = f.add(f.dropout(h, drop), a)
    del a
    return layer_norm(m, h, p + "output.LayerNorm")


def forward(m: Model) -> Tensor:
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    P = prefix_of(m)
    E = P + "embeddings."
    wte = m.weight(E + "word_embeddings.weight", (V, h))
    sim.op = "token_type_ids"  # torch.gather of the buffered token type ids (B, T)
    tt = sim.new(("B", "T"), "int64")
    if m.ad.prefix_tokens:
        prefix_cache(m, "encoder", a.num_layers, a.num_heads, a.head_dim)
    x = embedding_output(m, f.embedding(wte, sim.leaf(("B", "S"), "int64"), h))
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    types = int(cfg(m, "type_vocab_size", default=2))
    tte = f.embedding(m.weight(E + "token_type_embeddings.weight", (types, h)), tt, h)
    x = f.add(x, tte)
    del tte
    pos = sim.leaf(("B", "T"), "int64")  # a slice of the position_ids buffer (RoBERTa: made from the input ids)
    pe = f.embedding(m.weight(E + "position_embeddings.weight", (a.max_positions or 512, h)), pos, h)
    x = f.add(x, pe)
    del pe
    x = layer_norm(m, x, E + "LayerNorm")
    x = f.dropout(x, float(cfg(m, "hidden_dropout_prob", default=0.1)))
    x = run_stack(m, "encoder", a.num_layers, lambda t, i: layer(m, t, i), x)
    m.end_model()
    head = "lm_head." if a.family == "roberta" else "cls.predictions."
    dense = head + "dense" if a.family == "roberta" else head + "transform.dense"
    norm = head + "layer_norm" if a.family == "roberta" else head + "transform.LayerNorm"
    y = m.linear(x, dense, op="addmm")
    del x
    y = activation(m, y, "gelu")
    y = layer_norm(m, y, norm)
    bias = m.weight(head + "bias", (V,))
    logits = f.linear(y, wte, bias, V, op="addmm") if a.tie_embeddings else m.linear(y, head + "decoder", op="addmm")
    m.outer += [y, logits]
    del y
    # BertForMaskedLM: CrossEntropyLoss()(prediction_scores.view(-1, V), labels.view(-1)), in the logits' dtype
    flat = f.view(logits, ("B", "T", V))
    if f.autocast:  # cross_entropy is an fp32 autocast op: the logits are cast up first
        flat = f.to(flat, "fp32")
    logp = f.log_softmax(flat)
    del logits
    return f.nll_loss(logp, sim.leaf(("B", "T"), "int64"))
