"""Sizes no real model has, refused at once with one line (before anything is built or replayed).

Each bound is ten times the largest value among the catalogue's models (tests/model/test_bounds.py recomputes
the maxima from the catalogue and checks these constants): room for models to come, while a typo (1e14 for 1e11)
or a config with 10^6 layers is refused in milliseconds instead of computed for minutes.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import ConfigError, PeftcalcError

FACTOR = 10
# (largest in the catalogue, the model that has it): transformers' own counts of the catalogue configs.
LARGEST: dict[str, tuple[int, str]] = {
    "params": (671_026_404_352, "deepseek-v3"),
    "layers": (126, "llama-3.1-405b"),
    "hidden": (16_384, "llama-3.1-405b"),
    "vocab": (262_208, "gemma-3-27b-it"),
    "ffn": (53_248, "llama-3.1-405b"),
    "heads": (128, "deepseek-v3"),
    "experts": (512, "qwen3-next-80b-a3b-thinking"),
}
BOUNDS = {k: FACTOR * v for k, (v, _) in LARGEST.items()}

# config.json keys per bounded quantity (the names transformers' config classes use); ffn and experts may be 0.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers"),
    "vocab": ("vocab_size",),
    "ffn": ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "moe_intermediate_size", "encoder_ffn_dim",
            "decoder_ffn_dim", "shared_expert_intermediate_size"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "encoder_attention_heads",
              "decoder_attention_heads"),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok"),
}
MAY_BE_ZERO = ("ffn", "experts")


def why(kind: str) -> str:
    value, model = LARGEST[kind]
    return f"{FACTOR}x the largest in the catalogue, {model}'s {value:,}"


def check_params(n: int, what: str = "--params") -> None:
    if n > BOUNDS["params"]:
        raise PeftcalcError(f"{what} {n:,} is more parameters than any real model: peftcalc accepts up to "
                            f"{BOUNDS['params']:,} ({why('params')})")


def check_size(kind: str, value: int, what: str) -> None:
    """One shape number (--hidden, a config's num_hidden_layers ...) against its bound."""
    if value > BOUNDS[kind]:
        raise PeftcalcError(f"{what} {value:,} is larger than any real model's: peftcalc accepts up to "
                            f"{BOUNDS[kind]:,} ({why(kind)})")


def check_config(cfg: Mapping[str, Any], source: str) -> None:
    """Every bounded key of a config.json (and of its nested sub-configs) is a whole number within its bound."""
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            check_config(value, source)
            continue
        kind = next((k for k, keys in CONFIG_KEYS.items() if key in keys), None)
        if kind is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be a whole number, got {value!r}")
        if value < 0 or (value == 0 and kind not in MAY_BE_ZERO):
            raise ConfigError(f"{source}: {key} must be positive, got {value}")
        check_size(kind, value, f"{source}: {key}")
