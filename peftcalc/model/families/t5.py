"""T5 encoder-decoders: t5 (v1.0, v1.1, Flan-T5, T0) and mt5 (mT5, mT0).

T5LayerNorm is an RMSNorm (weight only), nothing has a bias, positions are a relative-attention bias table
held by the first block of each stack only. v1.0 has a ReLU MLP (`wi`, `wo`) and ties `lm_head` to `shared`;
v1.1/mT5 have a gated-GELU MLP (`wi_0`, `wi_1`, `wo`) and ship an untied `lm_head`.
Defaults are those of transformers 5's T5Config / MT5Config.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import ConfigError
from peftcalc.model.families.registry import register
from peftcalc.model.families._common import get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params

# transformers' defaults for the keys we read, per model_type.
DEFAULTS: dict[str, dict[str, Any]] = {
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               relative_attention_num_buckets=32, feed_forward_proj="relu", tie_word_embeddings=True),
    # transformers 5 declares tie_word_embeddings=True for mt5 but discards the value (it always ties in
    # from_config); MT5 never rescales the decoder output as tied T5 does, so it assumes an untied head, as
    # every mT5/mT0 checkpoint ships it (and as transformers 4's MT5Config defaulted).
    "mt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def _gated(proj: Any) -> bool:
    """`relu`, `gelu` ... or `gated-gelu`, `gated-silu` ...; transformers rejects anything else."""
    parts = str(proj).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ConfigError(f"config.json: feed_forward_proj {proj!r} must be 'ACT' or 'gated-ACT'")
    return parts[0] == "gated"


@register(*DEFAULTS)
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    family = cfg["model_type"]
    d = DEFAULTS[family]
    h = positive_int(cfg, "d_model", d["d_model"])
    d_kv = positive_int(cfg, "d_kv", d["d_kv"])  # not d_model / num_heads in v1.1 and mT5
    ffn = positive_int(cfg, "d_ff", d["d_ff"])
    enc = positive_int(cfg, "num_layers", d["num_layers"])
    dec = positive_int(cfg, "num_decoder_layers", enc)  # symmetric unless stated
    heads = positive_int(cfg, "num_heads", d["num_heads"])
    vocab = positive_int(cfg, "vocab_size", d["vocab_size"])
    buckets = positive_int(cfg, "relative_attention_num_buckets", d["relative_attention_num_buckets"])
    gated = _gated(get(cfg, "feed_forward_proj", d["feed_forward_proj"]))
    # transformers 5 ties lm_head in from_config whatever the config says; from_pretrained unties it when the
    # checkpoint holds its own lm_head.weight, which is what tie_word_embeddings=false marks (v1.1, mT5).
    tied = bool(get(cfg, "tie_word_embeddings", d["tie_word_embeddings"]))

    inner = heads * d_kv
    linears: list[Linear] = []
    others = [Params("shared.weight", vocab * h, "embedding", shape=(vocab, h))]  # encoder/decoder embed_tokens are tied to it
    stacks = (("encoder", enc, ("SelfAttention",)), ("decoder", dec, ("SelfAttention", "EncDecAttention")))
    for stack, n, attns in stacks:
        B = stack + ".block.{i}."
        for j, attn in enumerate(attns):  # layer.0 self-attention; decoder layer.1 cross-attention
            A = f"{B}layer.{j}.{attn}."
            linears += [Linear(A + "q", h, inner, False, n, block=stack),
                        Linear(A + "k", h, inner, False, n, block=stack),
                        Linear(A + "v", h, inner, False, n, block=stack),
                        Linear(A + "o", inner, h, False, n, block=stack)]
        F = f"{B}layer.{len(attns)}.DenseReluDense."
        wi = ["wi_0", "wi_1"] if gated else ["wi"]
        linears += [Linear(F + w, h, ffn, False, n, block=stack) for w in wi]
        linears.append(Linear(F + "wo", ffn, h, False, n, block=stack))
        # Only block 0's self-attention owns the relative position table; later blocks reuse it.
        others += [Params(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          buckets * heads, "position", shape=(buckets, heads)),
                   Params(B + "layer_norms", h * (len(attns) + 1), "norm", n),
                   Params(f"{stack}.final_layer_norm.weight", h, "norm")]
    # The head reads decoder states, so it runs at the decoder's sequence length.
    linears.append(Linear("lm_head", h, vocab, False, 1, head=True, block="decoder", tied=tied))

    arch = Architecture(
        family=family, kind="encoder-decoder", hidden_size=h, num_layers=enc + dec, num_heads=heads,
        num_kv_heads=heads, head_dim=d_kv, ffn_size=ffn, vocab_size=vocab, gated_mlp=gated,
        tie_embeddings=tied, norm="rmsnorm", num_encoder_layers=enc,
        max_positions=None,  # relative positions: no table bounds the length
    )
    return ModelSpec(name, arch, tuple(linears), tuple(others), source, dict(cfg))
