"""Falcon: rotary or ALiBi positions (no table), LayerNorm, fused query_key_value, GELU MLP.

Defaults are those of transformers' FalconConfig (transformers 5). The attention comes in three shapes:
multi-head (3 * hidden), multi-query (one shared k/v head: falcon-7b) and, with new_decoder_architecture,
grouped-query with num_kv_heads (falcon-40b/180b).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params


@register("falcon")
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    h = positive_int(cfg, "n_embed", get(cfg, "hidden_size", 4544))  # legacy n_embed wins, as in FalconConfig
    layers = positive_int(cfg, "num_hidden_layers", 32)
    heads = positive_int(cfg, "num_attention_heads", 71)
    vocab = positive_int(cfg, "vocab_size", 65024)
    ffn = positive_int(cfg, "ffn_hidden_size", 4 * h)
    tied = bool(get(cfg, "tie_word_embeddings", True))
    bias = bool(get(cfg, "bias", False))
    new_arch = bool(get(cfg, "new_decoder_architecture", False))
    multi_query = bool(get(cfg, "multi_query", True))
    parallel = bool(get(cfg, "parallel_attn", True))
    alibi = bool(get(cfg, "alibi", False))
    head_dim = divide(h, heads, "hidden_size / num_attention_heads")

    if new_arch:
        kv_heads = positive_int(cfg, "num_kv_heads", heads)
    elif multi_query:
        kv_heads = 1
    else:
        kv_heads = heads  # the old multi-head layout ignores num_kv_heads
    qkv_out = (heads + 2 * kv_heads) * head_dim
    # Sequential blocks norm before attention and MLP; parallel ones share one norm unless there are two
    # (num_ln_in_parallel_attn, which new_decoder_architecture defaults to 2).
    ln_parallel = get(cfg, "num_ln_in_parallel_attn", 2 if new_arch else 1)
    norms_per_layer = 2 if (not parallel or ln_parallel == 2) else 1

    L = "transformer.h.{i}."
    linears = (Linear(L + "self_attention.query_key_value", h, qkv_out, bias, layers),
               Linear(L + "self_attention.dense", h, h, bias, layers),
               Linear(L + "mlp.dense_h_to_4h", h, ffn, bias, layers),
               Linear(L + "mlp.dense_4h_to_h", ffn, h, bias, layers),
               Linear("lm_head", h, vocab, False, 1, head=True, tied=tied))
    others = (Params("transformer.word_embeddings.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params(L + "norms", 2 * h * norms_per_layer, "norm", layers),  # LayerNorms always have a bias
              Params("transformer.ln_f", 2 * h, "norm"))

    arch = Architecture(
        family="falcon", kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False,
        tie_embeddings=tied, norm="layernorm",
        max_positions=None if alibi else get(cfg, "max_position_embeddings", 2048),
    )
    return ModelSpec(name, arch, linears, others, source, dict(cfg))
