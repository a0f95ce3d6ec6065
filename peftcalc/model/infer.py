"""A bare parameter count -> a representative Llama-style shape, stated in the output and overridable.

The shape is the published Llama-family configuration whose size is nearest to N (in ratio); the total
stays exactly N, the difference being held by one "unattributed" entry (dense, trained only by full
fine-tuning). Shapes matter only where a method or an activation needs them.
"""

from __future__ import annotations

import math
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec, Params

# (hidden, layers, heads, kv_heads, ffn, vocab, source)
LADDER: tuple[tuple[int, int, int, int, int, int, str], ...] = (
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
MIN_PARAMS = 10**7

OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size")


def _config(row: tuple[int, int, int, int, int, int, str]) -> dict[str, Any]:
    h, layers, heads, kv, ffn, vocab, _ = row
    return dict(model_type="llama", hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=False)


def infer_spec(num_params: int, **overrides: int | None) -> ModelSpec:
    """A spec totalling exactly `num_params`, shaped like the nearest Llama; overrides replace shape numbers."""
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params <= 0:
        raise PeftcalcError(f"--params must be a positive number of parameters, got {num_params!r}")
    if num_params < MIN_PARAMS:
        raise PeftcalcError(f"--params {num_params} is below {MIN_PARAMS:.0e}; peftcalc infers shapes for language models "
                            "of 10M parameters and up (give a --config for anything smaller)")
    sizes = [(abs(math.log(num_params / spec_from_config(_config(r), "", "").inventory_params)), r) for r in LADDER]
    row = min(sizes, key=lambda t: t[0])[1]
    cfg = _config(row)
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
    shaped = spec_from_config(cfg, f"{num_params:.3g} params", f"inferred: Llama-style shape nearest {row[6]}")
    delta = num_params - shaped.inventory_params
    others = shaped.others + ((Params("unattributed", delta, "unattributed"),) if delta else ())
    return ModelSpec(shaped.name, shaped.arch, shaped.linears, others, shaped.source, shaped.hf_config, num_params)
