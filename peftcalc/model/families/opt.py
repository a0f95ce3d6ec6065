"""OPT: learned positions (offset by 2), LayerNorm, separate q/k/v/out_proj, ReLU fc1/fc2.

Defaults are those of transformers' OPTConfig (transformers 5). OPT-350m embeds tokens in a smaller
`word_embed_proj_dim` and maps to and from the hidden size with project_in/project_out.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params

POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding has max_position_embeddings + 2 rows


@register("opt")
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    h = positive_int(cfg, "hidden_size", 768)
    layers = positive_int(cfg, "num_hidden_layers", 12)
    heads = positive_int(cfg, "num_attention_heads", 12)
    ffn = positive_int(cfg, "ffn_dim", 3072)
    vocab = positive_int(cfg, "vocab_size", 50272)
    positions = positive_int(cfg, "max_position_embeddings", 2048)
    embed_dim = positive_int(cfg, "word_embed_proj_dim", h)
    tied = bool(get(cfg, "tie_word_embeddings", True))
    bias = bool(get(cfg, "enable_bias", True))
    affine = bool(get(cfg, "layer_norm_elementwise_affine", True))
    # The final norm exists only for pre-norm models (OPT-350m is post-norm).
    pre_norm = bool(get(cfg, "do_layer_norm_before", True))
    final_norm = pre_norm and not bool(get(cfg, "_remove_final_layer_norm", False))
    head_dim = divide(h, heads, "hidden_size / num_attention_heads")

    D = "model.decoder."
    L = D + "layers.{i}."
    linears = [Linear(L + "self_attn.k_proj", h, h, bias, layers),
               Linear(L + "self_attn.v_proj", h, h, bias, layers),
               Linear(L + "self_attn.q_proj", h, h, bias, layers),
               Linear(L + "self_attn.out_proj", h, h, bias, layers),
               Linear(L + "fc1", h, ffn, bias, layers),
               Linear(L + "fc2", ffn, h, bias, layers)]
    if embed_dim != h:
        linears += [Linear(D + "project_out", h, embed_dim, False),
                    Linear(D + "project_in", embed_dim, h, False)]
    linears.append(Linear("lm_head", embed_dim, vocab, False, 1, head=True, tied=tied))

    norm = 2 * h if affine else 0  # weight and bias, or nothing without elementwise affine
    others = [Params(D + "embed_tokens.weight", vocab * embed_dim, "embedding", shape=(vocab, embed_dim)),
              Params(D + "embed_positions.weight", (positions + POSITION_OFFSET) * h, "position", shape=((positions + POSITION_OFFSET), h)),
              Params(L + "norms", 2 * norm, "norm", layers)]  # self_attn_layer_norm, final_layer_norm
    if final_norm:
        others.append(Params(D + "final_layer_norm", norm, "norm"))

    arch = Architecture(
        family="opt", kind="decoder", hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False,
        tie_embeddings=tied, norm="layernorm", max_positions=positions,
        embed_dim=embed_dim if embed_dim != h else None,
    )
    return ModelSpec(name, arch, tuple(linears), tuple(others), source, dict(cfg))
