"""Which linear layers a method adapts, selected the way peft selects them.

The per-family defaults are peft 0.21's `TRANSFORMERS_MODELS_TO_*_MAPPING` tables (peft/utils/constants.py);
tests apply peft to the real model and compare the result.
"""

from __future__ import annotations

from peftcalc.errors import PeftcalcError
from peftcalc.model.spec import Linear, ModelSpec, Params

ALL_LINEAR = "all-linear"

# peft: TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (also used for DoRA and QLoRA).
LORA_DEFAULTS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",), "opt": ("q_proj", "v_proj"),
    "bloom": ("query_key_value",), "falcon": ("query_key_value",), "t5": ("q", "v"), "mt5": ("q", "v"),
    "bert": ("query", "value"), "roberta": ("query", "value"),
}
# peft has no default for phi3 (get_peft_model asks for target_modules): we adapt its fused attention input.
LORA_FALLBACK: dict[str, tuple[str, ...]] = {"phi3": ("qkv_proj",)}

# peft: TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and ..._IA3_FEEDFORWARD_MODULES_MAPPING.
IA3_DEFAULTS: dict[str, tuple[str, ...]] = {
    "llama": ("k_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
    "mixtral": ("k_proj", "v_proj", "w2"), "qwen2": ("q_proj", "v_proj", "down_proj"),
    "gemma": ("q_proj", "v_proj", "down_proj"), "gemma2": ("q_proj", "v_proj", "down_proj"),
    "gpt2": ("c_attn", "mlp.c_proj"), "gpt_neox": ("query_key_value", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "fc2"), "bloom": ("query_key_value", "mlp.dense_4h_to_h"),
    "falcon": ("query_key_value", "dense_4h_to_h"), "t5": ("k", "v", "wo"), "mt5": ("k", "v", "wi_1"),
    "bert": ("key", "value", "output.dense"), "roberta": ("key", "value", "output.dense"),
}
IA3_FEEDFORWARD: dict[str, tuple[str, ...]] = {
    "llama": ("down_proj",), "mistral": ("down_proj",), "mixtral": ("w2",), "qwen2": ("down_proj",),
    "gemma": ("down_proj",), "gemma2": ("down_proj",), "gpt2": ("mlp.c_proj",), "gpt_neox": ("dense_4h_to_h",),
    "opt": ("fc2",), "bloom": ("mlp.dense_4h_to_h",), "falcon": ("dense_4h_to_h",), "t5": ("wo",), "mt5": (),
    "bert": ("output.dense",), "roberta": ("output.dense",),
}
IA3_FALLBACK: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "phi3": (("qkv_proj", "down_proj"), ("down_proj",)),
}

# peft 0.21 on transformers 5 (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe): for
# MoE models whose v4 experts and router were nn.Linear, LoRA's all-linear also targets, as parameters, the
# router weight and the fused 3-D expert tensors. Value: how many v4 projections the tensor fuses; peft gives
# it rank k*r (gate_up_proj fuses w1 and w3).
ALL_LINEAR_PARAMETERS: dict[str, dict[str, int]] = {
    "mixtral": {"mlp.gate.weight": 1, "experts.gate_up_proj": 2, "experts.down_proj": 1},
}


def all_linear_parameters(spec: ModelSpec) -> tuple[tuple[Params, int], ...]:
    """The non-Linear parameters peft's all-linear adapts in `spec` (MoE routers and experts), with their k."""
    table = ALL_LINEAR_PARAMETERS.get(spec.family, {})
    return tuple((p, k) for p in spec.others for suffix, k in table.items()
                 if p.name.endswith("." + suffix) and len(p.shape) in (2, 3))


def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """`--targets q_proj,v_proj` -> ("q_proj", "v_proj"); `all-linear` stays one word; None = defaults."""
    if text is None:
        return None
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise PeftcalcError("--targets is empty; give module names like q_proj,v_proj or all-linear")
    if ALL_LINEAR in names and len(names) > 1:
        raise PeftcalcError("--targets all-linear cannot be combined with module names")
    return names


def matches(lin: Linear, target: str) -> bool:
    """peft's rule: the module's full name equals the target or ends with '.' + target."""
    return lin.name == target or lin.name.endswith("." + target)


def unmatched(spec: ModelSpec, targets: tuple[str, ...]) -> list[str]:
    return [t for t in targets if t != ALL_LINEAR and not any(matches(l, t) for l in spec.linears)]


def select(spec: ModelSpec, targets: tuple[str, ...], strict: bool = True) -> tuple[Linear, ...]:
    """The linears `targets` selects. Strict (user-given targets): every target must match something;
    otherwise (peft's defaults) like peft, only an empty selection is an error."""
    if targets == (ALL_LINEAR,):
        return tuple(l for l in spec.linears if not l.head)
    chosen = tuple(l for l in spec.linears if any(matches(l, t) for t in targets))
    missing = unmatched(spec, targets)
    if (missing and strict) or not chosen:
        names = sorted({l.leaf for l in spec.linears})
        raise PeftcalcError(
            f"target module(s) {', '.join(missing)} not found in {spec.name} ({spec.family}); "
            f"its linear layers are: {', '.join(names)}"
        )
    return chosen


def default_lora_targets(spec: ModelSpec) -> tuple[tuple[str, ...], str | None]:
    """peft's default LoRA targets for the family, and a note when peft has none and we chose."""
    if spec.family in LORA_DEFAULTS:
        return LORA_DEFAULTS[spec.family], None
    if spec.family in LORA_FALLBACK:
        t = LORA_FALLBACK[spec.family]
        return t, f"peft has no default LoRA targets for {spec.family}; peftcalc used {','.join(t)}"
    raise PeftcalcError(f"no default target modules known for {spec.family}; pass --targets")


def default_ia3_targets(spec: ModelSpec) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    if spec.family in IA3_DEFAULTS:
        return IA3_DEFAULTS[spec.family], IA3_FEEDFORWARD[spec.family], None
    if spec.family in IA3_FALLBACK:
        t, ff = IA3_FALLBACK[spec.family]
        return t, ff, f"peft has no default IA3 targets for {spec.family}; peftcalc used {','.join(t)}"
    raise PeftcalcError(f"no default IA3 target modules known for {spec.family}; pass --targets")
