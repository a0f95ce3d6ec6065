"""GPT-NeoX (Pythia, GPT-NeoX-20B): rotary positions, LayerNorm, fused query_key_value, GELU MLP.

Defaults are those of transformers' GPTNeoXConfig (transformers 5). transformers 5 names the output head
`lm_head` (checkpoints' `embed_out` is renamed on load).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params


@register("gpt_neox")
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    h = positive_int(cfg, "hidden_size", 6144)
    layers = positive_int(cfg, "num_hidden_layers", 44)
    heads = positive_int(cfg, "num_attention_heads", 64)
    ffn = positive_int(cfg, "intermediate_size", 24576)
    vocab = positive_int(cfg, "vocab_size", 50432)
    tied = bool(get(cfg, "tie_word_embeddings", False))
    attn_bias = bool(get(cfg, "attention_bias", True))
    head_dim = divide(h, heads, "hidden_size / num_attention_heads")

    L = "gpt_neox.layers.{i}."
    linears = (Linear(L + "attention.query_key_value", h, 3 * h, attn_bias, layers),
               Linear(L + "attention.dense", h, h, attn_bias, layers),
               Linear(L + "mlp.dense_h_to_4h", h, ffn, True, layers),  # MLP biases are unconditional
               Linear(L + "mlp.dense_4h_to_h", ffn, h, True, layers),
               Linear("lm_head", h, vocab, False, 1, head=True, tied=tied))
    others = (Params("gpt_neox.embed_in.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params(L + "norms", 2 * 2 * h, "norm", layers),  # input_ and post_attention_layernorm
              Params("gpt_neox.final_layer_norm", 2 * h, "norm"))

    arch = Architecture(
        family="gpt_neox", kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False,
        tie_embeddings=tied, norm="layernorm", max_positions=get(cfg, "max_position_embeddings", 2048),
    )
    return ModelSpec(name, arch, linears, others, source, dict(cfg))
