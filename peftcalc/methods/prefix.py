"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer.

peft stores one vector of num_layers x 2 x token_dim per virtual token; for configs with
`num_key_value_heads` token_dim is num_key_value_heads x head_dim (peft's grouped-query handling).
With the reparameterization (`projection`), an MLP produces the prefix during training and only its
output is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.methods.prompt import check_virtual_tokens
from peftcalc.model.spec import ModelSpec

# Families whose config.json carries num_key_value_heads (peft's _prepare_prompt_learning_config).
KV_HEADS_CONFIGS = frozenset({"llama", "mistral", "mixtral", "qwen2", "gemma", "gemma2", "phi3"})


def prefix_token_dim(spec: ModelSpec) -> int:
    a = spec.arch
    if spec.derivation is None:
        return a.num_kv_heads * a.head_dim if a.family in KV_HEADS_CONFIGS else a.hidden_size
    return derived_token_dim(spec.derivation.config)


def derived_token_dim(config: Mapping[str, Any]) -> int:
    """peft's prefix width from the model's config dict (peft.utils.other._prepare_prompt_learning_config): the
    hidden size, or with num_key_value_heads the key/value width of one layer, the widest for models whose layers
    differ (global_head_dim, per_layer_config)."""
    cfg = config.get("text_config") or config
    hidden = next(cfg[k] for k in ("hidden_size", "n_embd", "d_model") if k in cfg)
    if "num_key_value_heads" not in cfg:
        return hidden
    heads = next(cfg[k] for k in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads") if k in cfg)
    kv = cfg["num_key_value_heads"]
    if cfg.get("global_head_dim") is not None:
        return cfg["global_head_dim"] * (cfg.get("num_global_key_value_heads") or kv)
    if cfg.get("per_layer_config") is not None:
        head_dim, best_kv = cfg.get("head_dim", hidden // heads), kv
        for layer in cfg["per_layer_config"].values():
            if layer.get("head_dim", head_dim) > head_dim:
                head_dim, best_kv = layer["head_dim"], layer.get("num_key_value_heads", kv)
        return head_dim * best_kv
    head_dim = cfg["head_dim"] if cfg.get("head_dim") is not None else hidden // heads
    return head_dim * kv


def prefix_layers(spec: ModelSpec) -> int:
    """peft takes the config's num_hidden_layers: the encoder's depth for T5."""
    a = spec.arch
    return a.num_encoder_layers if a.kind == "encoder-decoder" else a.num_layers


@dataclass(frozen=True)
class PrefixTuning:
    virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden: int | None = None  # width of the reparameterization MLP; peft default: token_dim

    @property
    def name(self) -> str:
        return "prefix"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        check_virtual_tokens(self.virtual_tokens)
        # One prefix, not one per stack: peft's PrefixEncoder has num_virtual_tokens rows even for
        # encoder-decoder models (it reuses the encoder-depth prefix for the decoder at run time).
        n = self.virtual_tokens
        d = prefix_token_dim(spec)
        width = prefix_layers(spec) * 2 * d
        prefix = TensorGroup("prompt_encoder.embedding.weight", n * (d if self.projection else width), 1, True, True,
                             shape=(n, d if self.projection else width))
        added: tuple[TensorGroup, ...] = (prefix,)
        if self.projection:
            e = self.encoder_hidden or d
            added += (
                TensorGroup("prompt_encoder.transform.0.weight", d * e, 1, True, True, shape=(e, d)),
                TensorGroup("prompt_encoder.transform.0.bias", e, 1, True, True),
                TensorGroup("prompt_encoder.transform.2.weight", e * width, 1, True, True, shape=(width, e)),
                TensorGroup("prompt_encoder.transform.2.bias", width, 1, True, True),
            )
        saved = (TensorGroup("prompt_embeddings", n * width, 1, True, True, shape=(n, width)),)
        return Adaptation("prefix", spec, base_tensors(spec, False) + added, saved=saved,
                          prefix_tokens=self.virtual_tokens)
