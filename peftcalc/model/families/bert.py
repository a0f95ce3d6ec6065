"""BERT-style encoders: bert and roberta, with the masked-LM head their checkpoints ship.

Post-LayerNorm blocks with biases everywhere, learned absolute positions and token types. Built as
`*ForMaskedLM` (see measure/hf_model.py), which has no pooler; its decoder is tied to the word embeddings and its
bias is the head's separate `bias` parameter (tied to `decoder.bias`, counted once).
Defaults are those of transformers 5's BertConfig / RobertaConfig.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import ConfigError
from peftcalc.model.families.registry import register
from peftcalc.model.families._common import divide, get, positive_int
from peftcalc.model.spec import Architecture, Linear, ModelSpec, Params

# transformers' defaults for the keys we read, per model_type.
DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                 tie_word_embeddings=True),
    "roberta": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=1,
                    tie_word_embeddings=True),
}

# Where the masked-LM head lives and what its parts are called.
HEAD = {
    "bert": dict(dense="cls.predictions.transform.dense", norm="cls.predictions.transform.LayerNorm",
                 decoder="cls.predictions.decoder", bias="cls.predictions.bias"),
    "roberta": dict(dense="lm_head.dense", norm="lm_head.layer_norm", decoder="lm_head.decoder",
                    bias="lm_head.bias"),
}


@register(*DEFAULTS)
def build(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    family = cfg["model_type"]
    d = DEFAULTS[family]
    h = positive_int(cfg, "hidden_size", d["hidden_size"])
    ffn = positive_int(cfg, "intermediate_size", d["intermediate_size"])
    layers = positive_int(cfg, "num_hidden_layers", d["num_hidden_layers"])
    heads = positive_int(cfg, "num_attention_heads", d["num_attention_heads"])
    head_dim = divide(h, heads, "hidden_size / num_attention_heads")  # transformers refuses a remainder
    vocab = positive_int(cfg, "vocab_size", d["vocab_size"])
    positions = positive_int(cfg, "max_position_embeddings", d["max_position_embeddings"])
    types = positive_int(cfg, "type_vocab_size", d["type_vocab_size"])
    tied = bool(get(cfg, "tie_word_embeddings", d["tie_word_embeddings"]))
    if get(cfg, "add_cross_attention", False):
        raise ConfigError("config.json: add_cross_attention makes a BERT decoder; only encoders are supported")

    P = f"{family}."
    L = P + "encoder.layer.{i}."
    linears = [Linear(L + "attention.self.query", h, h, True, layers),
               Linear(L + "attention.self.key", h, h, True, layers),
               Linear(L + "attention.self.value", h, h, True, layers),
               Linear(L + "attention.output.dense", h, h, True, layers),
               Linear(L + "intermediate.dense", h, ffn, True, layers),
               Linear(L + "output.dense", ffn, h, True, layers)]
    others = [Params(P + "embeddings.word_embeddings.weight", vocab * h, "embedding", shape=(vocab, h)),
              Params(P + "embeddings.position_embeddings.weight", positions * h, "position", shape=(positions, h)),
              Params(P + "embeddings.token_type_embeddings.weight", types * h, "embedding", shape=(types, h)),
              Params(P + "embeddings.LayerNorm", 2 * h, "norm"),
              Params(L + "layer_norms", 2 * 2 * h, "norm", layers)]  # attention.output and output LayerNorms

    # The masked-LM head: dense + LayerNorm + decoder. Tied, the decoder's weight is the word embedding and its
    # bias is the head's `bias` (one vocab vector, counted on the decoder). Untied, nothing is shared and
    # transformers keeps both the decoder's own bias and the head's `bias`.
    hd = HEAD[family]
    linears += [Linear(hd["dense"], h, h, True),
                Linear(hd["decoder"], h, vocab, True, head=True, tied=tied)]
    others.append(Params(hd["norm"], 2 * h, "norm"))
    if not tied:
        others.append(Params(hd["bias"], vocab, "other"))

    # RoBERTa numbers positions from pad_token_id + 1, so its table (514) holds 512 usable positions.
    offset = int(get(cfg, "pad_token_id", d["pad_token_id"])) + 1 if family == "roberta" else 0
    arch = Architecture(
        family=family, kind="encoder", hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=heads,
        head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, gated_mlp=False, tie_embeddings=tied,
        norm="layernorm", max_positions=positions - offset,
    )
    return ModelSpec(name, arch, tuple(linears), tuple(others), source, dict(cfg))
