"""BLOOM: ALiBi (no position table), LayerNorm (also after the embedding), fused query_key_value.

Defaults are those of transformers' BloomConfig (transformers 5). The MLP width is always 4 * hidden and
every linear layer but the head has a bias.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params


@register("bloom")
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    # BloomConfig: legacy `n_embed` overrides hidden_size; standard layer/head names override n_layer/n_head.
    h = positive_int(cfg, "n_embed", get(cfg, "hidden_size", 64))
    layers = positive_int(cfg, "num_hidden_layers", get(cfg, "n_layer", 2))
    heads = positive_int(cfg, "num_attention_heads", get(cfg, "n_head", 8))
    vocab = positive_int(cfg, "vocab_size", 250880)
    tied = bool(get(cfg, "tie_word_embeddings", True))
    head_dim = divide(h, heads, "hidden_size / n_head")
    ffn = 4 * h

    L = "transformer.h.{i}."
    linears = (Linear(L + "self_attention.query_key_value", h, 3 * h, True, layers),
               Linear(L + "self_attention.dense", h, h, True, layers),
               Linear(L + "mlp.dense_h_to_4h", h, ffn, True, layers),
               Linear(L + "mlp.dense_4h_to_h", ffn, h, True, layers),
               Linear("lm_head", h, vocab, False, 1, head=True, tied=tied))
    others = (Params("transformer.word_embeddings.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params("transformer.word_embeddings_layernorm", 2 * h, "norm"),
              Params(L + "norms", 2 * 2 * h, "norm", layers),  # input_ and post_attention_layernorm
              Params("transformer.ln_f", 2 * h, "norm"))

    arch = Architecture(
        family="bloom", kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False,
        tie_embeddings=tied, norm="layernorm", max_positions=None,  # ALiBi: no fixed limit
    )
    return ModelSpec(name, arch, linears, others, source, dict(cfg))
