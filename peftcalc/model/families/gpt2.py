"""GPT-2: learned positions, LayerNorm, fused c_attn, GELU MLP, all as transposed Conv1D with biases.

Defaults are those of transformers' GPT2Config (transformers 5).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params


@register("gpt2")
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    # GPT2Config maps the standard names onto n_*; a standard key present in the file wins.
    h = positive_int(cfg, "hidden_size", get(cfg, "n_embd", 768))
    layers = positive_int(cfg, "num_hidden_layers", get(cfg, "n_layer", 12))
    heads = positive_int(cfg, "num_attention_heads", get(cfg, "n_head", 12))
    positions = positive_int(cfg, "max_position_embeddings", get(cfg, "n_positions", 1024))
    ffn = positive_int(cfg, "n_inner", 4 * h)
    vocab = positive_int(cfg, "vocab_size", 50257)
    tied = bool(get(cfg, "tie_word_embeddings", True))
    cross = bool(get(cfg, "add_cross_attention", False))
    head_dim = divide(h, heads, "hidden_size / num_attention_heads")

    L = "transformer.h.{i}."
    linears = [Linear(L + "attn.c_attn", h, 3 * h, True, layers, conv1d=True),
               Linear(L + "attn.c_proj", h, h, True, layers, conv1d=True)]
    if cross:  # keys/values from the encoder, queries from a separate q_attn
        linears += [Linear(L + "crossattention.c_attn", h, 2 * h, True, layers, conv1d=True),
                    Linear(L + "crossattention.q_attn", h, h, True, layers, conv1d=True),
                    Linear(L + "crossattention.c_proj", h, h, True, layers, conv1d=True)]
    linears += [Linear(L + "mlp.c_fc", h, ffn, True, layers, conv1d=True),
                Linear(L + "mlp.c_proj", ffn, h, True, layers, conv1d=True),
                Linear("lm_head", h, vocab, False, 1, head=True, tied=tied)]

    norms_per_layer = 3 if cross else 2  # ln_1, ln_2 (+ ln_cross_attn); weight and bias each
    others = (Params("transformer.wte.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params("transformer.wpe.weight", positions * h, "position", shape=(positions, h)),
              Params(L + "norms", 2 * h * norms_per_layer, "norm", layers),
              Params("transformer.ln_f", 2 * h, "norm"))

    arch = Architecture(
        family="gpt2", kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False,
        tie_embeddings=tied, norm="layernorm", max_positions=positions,
    )
    return ModelSpec(name, arch, tuple(linears), others, source, dict(cfg))
