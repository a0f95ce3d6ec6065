"""Llama-style decoders: llama, mistral, mixtral, qwen2, gemma, gemma2, phi3.

RMSNorm, rotary positions (no position table), gated SiLU/GELU MLP, grouped-query attention.
Defaults are those of each transformers `*Config` class (transformers 5).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params

# transformers' defaults for the keys we read, per model_type.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  max_position_embeddings=2048),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                    max_position_embeddings=4096 * 32),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                    num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096 * 32),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
                  max_position_embeddings=32768),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, tie_word_embeddings=True,
                  attention_bias=False, max_position_embeddings=8192),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True,
                   attention_bias=False, max_position_embeddings=8192),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, tie_word_embeddings=False, max_position_embeddings=4096),
}


@register(*DEFAULTS)
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    family = cfg["model_type"]
    d = DEFAULTS[family]
    h = positive_int(cfg, "hidden_size", d["hidden_size"])
    ffn = positive_int(cfg, "intermediate_size", d["intermediate_size"])
    layers = positive_int(cfg, "num_hidden_layers", d["num_hidden_layers"])
    heads = positive_int(cfg, "num_attention_heads", d["num_attention_heads"])
    kv_heads = positive_int(cfg, "num_key_value_heads", d.get("num_key_value_heads", heads))
    head_dim = positive_int(cfg, "head_dim", d.get("head_dim", divide(h, heads, "hidden_size / num_attention_heads")))
    vocab = positive_int(cfg, "vocab_size", d["vocab_size"])
    tied = bool(get(cfg, "tie_word_embeddings", d["tie_word_embeddings"]))
    # qwen2 always has q/k/v biases; llama-likes have them only with attention_bias.
    qkv_bias = family == "qwen2" or bool(get(cfg, "attention_bias", d.get("attention_bias", False)))
    o_bias = family != "qwen2" and qkv_bias
    mlp_bias = bool(get(cfg, "mlp_bias", d.get("mlp_bias", False)))
    experts = positive_int(cfg, "num_local_experts", d["num_local_experts"]) if family == "mixtral" else 0

    L = "model.layers.{i}."
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    if family == "phi3":
        attn = [Linear(L + "self_attn.qkv_proj", h, q_out + 2 * kv_out, False, layers),
                Linear(L + "self_attn.o_proj", q_out, h, False, layers)]
        mlp = [Linear(L + "mlp.gate_up_proj", h, 2 * ffn, False, layers),
               Linear(L + "mlp.down_proj", ffn, h, False, layers)]
    else:
        attn = [Linear(L + "self_attn.q_proj", h, q_out, qkv_bias, layers),
                Linear(L + "self_attn.k_proj", h, kv_out, qkv_bias, layers),
                Linear(L + "self_attn.v_proj", h, kv_out, qkv_bias, layers),
                Linear(L + "self_attn.o_proj", q_out, h, o_bias, layers)]
        if experts:
            mlp = []  # fused 3-D expert tensors and a router, not nn.Linear in transformers 5
        else:
            mlp = [Linear(L + "mlp.gate_proj", h, ffn, mlp_bias, layers),
                   Linear(L + "mlp.up_proj", h, ffn, mlp_bias, layers),
                   Linear(L + "mlp.down_proj", ffn, h, mlp_bias, layers)]
    head = Linear("lm_head", h, vocab, False, 1, head=True, tied=tied)

    norms_per_layer = 4 if family == "gemma2" else 2
    others = [Params("model.embed_tokens.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params(L + "norms", h * norms_per_layer, "norm", layers),
              Params("model.norm.weight", h, "norm")]
    if experts:
        others += [Params(L + "mlp.gate.weight", experts * h, "other", layers, (experts, h)),
                   Params(L + "mlp.experts.gate_up_proj", experts * 2 * ffn * h, "expert", layers, (experts, 2 * ffn, h)),
                   Params(L + "mlp.experts.down_proj", experts * ffn * h, "expert", layers, (experts, h, ffn))]

    arch = Architecture(
        family=family, kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=True,
        tie_embeddings=tied, norm="rmsnorm", num_experts=experts,
        experts_per_token=positive_int(cfg, "num_experts_per_tok", d["num_experts_per_tok"]) if experts else 0,
        max_positions=get(cfg, "max_position_embeddings", d["max_position_embeddings"]),
    )
    return ModelSpec(name, arch, tuple(attn + mlp + [head]), tuple(others), source, dict(cfg))
