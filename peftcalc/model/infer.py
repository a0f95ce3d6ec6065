"""A bare parameter count -> a representative Llama-style shape, stated in the output and overridable.

The shape starts from the published Llama-family configuration whose size is nearest to N (in ratio).
Its FFN width then absorbs the difference to N (its layer count too, when the FFN would move by more than
15 %), so the shape itself totals N to within one FFN unit (3 x hidden x layers parameters); that last
remainder, never negative, is held by one "unattributed" entry (dense, trained only by full fine-tuning).
"""

from __future__ import annotations

import math
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.model.bounds import check_params, check_size
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec, Params

# (hidden, layers, heads, kv_heads, ffn, vocab, source)
LADDER: tuple[tuple[int, int, int, int, int, int, str], ...] = (
    (512, 8, 8, 8, 1408, 32000, "a 60M Llama"),
    (768, 12, 12, 12, 2048, 32000, "GPT-2-small-sized Llama"),
    (1024, 24, 16, 16, 2816, 32000, "GPT-2-medium-sized Llama"),
    (2048, 22, 32, 4, 5632, 32000, "TinyLlama-1.1B"),
    (3200, 26, 32, 32, 8640, 32000, "OpenLLaMA-3B"),
    (4096, 32, 32, 32, 11008, 32000, "Llama-2-7B"),
    (5120, 40, 40, 40, 13824, 32000, "Llama-2-13B"),
    (8192, 48, 64, 8, 22016, 32000, "CodeLlama-34B"),
    (8192, 80, 64, 8, 28672, 32000, "Llama-2-70B"),
    (16384, 126, 128, 8, 53248, 128256, "Llama-3.1-405B"),
)
MIN_PARAMS = 5 * 10**7

OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size")
OVERRIDE_BOUNDS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
                   "num_key_value_heads": "heads", "intermediate_size": "ffn", "vocab_size": "vocab"}
OVERRIDE_FLAGS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
                  "num_key_value_heads": "kv-heads", "intermediate_size": "ffn", "vocab_size": "vocab"}


def _config(row: tuple[int, int, int, int, int, int, str]) -> dict[str, Any]:
    h, layers, heads, kv, ffn, vocab, _ = row
    return dict(model_type="llama", hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=False)


def infer_spec(num_params: int, **overrides: int | None) -> ModelSpec:
    """A spec totalling exactly `num_params`, shaped like the nearest Llama; overrides replace shape numbers."""
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params <= 0:
        raise PeftcalcError(f"--params must be a positive number of parameters, got {num_params!r}")
    check_params(num_params)
    for key, value in overrides.items():
        if value is not None and key in OVERRIDE_BOUNDS:
            check_size(OVERRIDE_BOUNDS[key], value, f"--{OVERRIDE_FLAGS[key]}")
    if num_params < MIN_PARAMS:
        raise PeftcalcError(f"--params {num_params} is below {MIN_PARAMS:.0e}; peftcalc infers shapes for language models "
                            "of 50M parameters and up (give a --config for anything smaller)")
    sizes = [(abs(math.log(num_params / spec_from_config(_config(r), "", "", bounded=False).inventory_params)), r) for r in LADDER]
    row = min(sizes, key=lambda t: t[0])[1]
    cfg = _config(row)
    given = {k for k, v in overrides.items() if v is not None}
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise PeftcalcError(f"unknown shape override {key!r}")
        if value is not None:
            if value <= 0:
                raise PeftcalcError(f"shape override {key} must be positive, got {value}")
            cfg[key] = value
            if key == "num_attention_heads" and overrides.get("num_key_value_heads") is None:
                cfg["num_key_value_heads"] = value if row[3] == row[2] else cfg["num_key_value_heads"]
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise PeftcalcError(f"--hidden {cfg['hidden_size']} is not divisible by --heads {cfg['num_attention_heads']}")
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise PeftcalcError(f"--heads {cfg['num_attention_heads']} is not divisible by --kv-heads {cfg['num_key_value_heads']}")
    cfg = _fit(cfg, num_params, given)
    shaped = spec_from_config(cfg, f"{num_params:.3g} params", f"inferred: Llama-style shape nearest {row[6]}",
                              bounded=False)
    delta = num_params - shaped.inventory_params
    if delta < 0:
        raise PeftcalcError(f"the shape overrides give {shaped.inventory_params:,} parameters, more than --params "
                            f"{num_params:,}; drop an override or raise --params")
    others = shaped.others + ((Params("unattributed", delta, "unattributed"),) if delta else ())
    return ModelSpec(shaped.name, shaped.arch, shaped.linears, others, shaped.source, shaped.hf_config, num_params)


def _count(cfg: dict[str, Any]) -> int:
    return spec_from_config(cfg, "", "", bounded=False).inventory_params


def _fit(cfg: dict[str, Any], num_params: int, given: set[str]) -> dict[str, Any]:
    """Move layers, then FFN width (whichever the user did not fix) so the shape totals N from below."""
    cfg = dict(cfg)
    per_ffn_unit = 3 * cfg["hidden_size"]  # gate, up and down each gain hidden_size weights per unit, per layer
    if "intermediate_size" in given:
        return cfg
    shortfall = num_params - _count(cfg)
    ffn_step = shortfall // (per_ffn_unit * cfg["num_hidden_layers"])
    if abs(ffn_step) > 0.15 * cfg["intermediate_size"] and "num_hidden_layers" not in given:
        per_layer = _count({**cfg, "num_hidden_layers": 2}) - _count({**cfg, "num_hidden_layers": 1})
        cfg["num_hidden_layers"] = max(1, cfg["num_hidden_layers"] + round(shortfall / per_layer))
        shortfall = num_params - _count(cfg)
        ffn_step = shortfall // (per_ffn_unit * cfg["num_hidden_layers"])
    cfg["intermediate_size"] = max(1, cfg["intermediate_size"] + ffn_step)
    return cfg
