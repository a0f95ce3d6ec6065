"""Which linear layers (and, for MoE models on transformers 5, which fused parameters) a method adapts, selected
the way peft selects them.

The per-model-type defaults are peft 0.21's `TRANSFORMERS_MODELS_TO_*_MAPPING` tables (peft/utils/constants.py),
copied whole; tests read them from the installed peft and compare. Where peft has no default for a model type,
peftcalc chooses the attention's query and value projections it finds in the model (`fallback_targets`) and says
so, or asks for --targets when it finds none.
"""

from __future__ import annotations

import dataclasses
import re

from peftcalc.errors import PeftcalcError
from peftcalc.model.spec import Linear, ModelSpec, Params, expand_name, layer_indices

ALL_LINEAR = "all-linear"
PEFT_VERSION = "0.21"  # the peft whose tables and rules are copied here (tests compare with the installed one)
Targets = tuple[str, ...] | str  # module name suffixes, or (peft: a plain string) a regex full-matched on names

# peft: TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (also used for DoRA and QLoRA).
LORA_DEFAULTS: dict[str, Targets] = {
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"), "gpt2": ("c_attn",),
    "bloom": ("query_key_value",), "blip-2": ("q", "v", "q_proj", "v_proj"), "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "deberta": ("in_proj",),
    "layoutlm": ("query", "value"), "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",), "gpt_bigcode": ("c_attn",), "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",), "RefinedWeb": ("query_key_value",), "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"), "codegen": ("qkv_proj",), "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
}

# peft: TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and ..._IA3_FEEDFORWARD_MODULES_MAPPING.
IA3_DEFAULTS: dict[str, tuple[str, ...]] = {
    "t5": ("k", "v", "wo"), "mt5": ("k", "v", "wi_1"), "gpt2": ("c_attn", "mlp.c_proj"),
    "bloom": ("query_key_value", "mlp.dense_4h_to_h"), "roberta": ("key", "value", "output.dense"),
    "opt": ("q_proj", "k_proj", "fc2"), "gptj": ("q_proj", "v_proj", "fc_out"),
    "gpt_neox": ("query_key_value", "dense_4h_to_h"), "gpt_neo": ("q_proj", "v_proj", "c_proj"),
    "bart": ("q_proj", "v_proj", "fc2"), "gpt_bigcode": ("c_attn", "mlp.c_proj"), "llama": ("k_proj", "v_proj", "down_proj"),
    "llama4": ("q_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
    "mixtral": ("k_proj", "v_proj", "w2"), "bert": ("key", "value", "output.dense"),
    "deberta-v2": ("key_proj", "value_proj", "output.dense"), "deberta": ("in_proj", "output.dense"),
    "RefinedWebModel": ("query_key_value", "dense_4h_to_h"), "RefinedWeb": ("query_key_value", "dense_4h_to_h"),
    "falcon": ("query_key_value", "dense_4h_to_h"), "phi": ("q_proj", "v_proj", "fc2"),
    "gemma": ("q_proj", "v_proj", "down_proj"), "gemma2": ("q_proj", "v_proj", "down_proj"),
    "gemma3_text": ("q_proj", "v_proj", "down_proj"), "qwen2": ("q_proj", "v_proj", "down_proj"),
    "qwen3": ("q_proj", "v_proj", "down_proj"),
}
IA3_FEEDFORWARD: dict[str, tuple[str, ...]] = {
    "t5": ("wo",), "mt5": (), "gpt2": ("mlp.c_proj",), "bloom": ("mlp.dense_4h_to_h",), "roberta": ("output.dense",),
    "opt": ("fc2",), "gptj": ("fc_out",), "gpt_neox": ("dense_4h_to_h",), "gpt_neo": ("c_proj",), "bart": ("fc2",),
    "gpt_bigcode": ("mlp.c_proj",), "llama": ("down_proj",), "llama4": ("down_proj",), "mistral": ("down_proj",),
    "mixtral": ("w2",), "bert": ("output.dense",), "deberta-v2": ("output.dense",), "deberta": ("output.dense",),
    "RefinedWeb": ("dense_4h_to_h",), "RefinedWebModel": ("dense_4h_to_h",), "falcon": ("dense_4h_to_h",),
    "phi": ("fc2",), "gemma": ("down_proj",), "gemma2": ("down_proj",), "gemma3_text": ("down_proj",),
    "qwen2": ("down_proj",), "qwen3": ("down_proj",),
}

# Where peft has no default: the attention's query and value projections, as the first pair the model has
# (separate projections, MLA's up-projections, BERT-style, T5-style), else a fused qkv projection.
QUERY_VALUE_PAIRS = (("q_proj", "v_proj"), ("q_b_proj", "kv_b_proj"), ("q_proj", "kv_b_proj"), ("query", "value"),
                     ("q", "v"))
FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv")
FEEDFORWARD_OUT = ("down_proj", "fc2", "w2", "dense_4h_to_h", "c_proj", "fc_out", "wo")

# peft 0.21 on transformers 5 (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe): LoRA on a
# MoE model whose v4 experts and router were nn.Linear targets, by their v4 names, the fused 3-D expert tensors and
# the router weight as parameters. MOE_CONVERSION: model_type -> pattern (transformers.conversion_mapping.
# _MODEL_TO_CONVERSION_PATTERN for the patterns peft converts, plus peft's own mixtral entry); MOE_TARGETS: v4 name ->
# parameter (peft's _MOE_TARGET_MODULE_MAPPING); MOE_FUSED: a parameter fusing several v4 names gets their
# number times the rank (peft's _MOE_FUSED_TARGETS).
MOE_CONVERSION: dict[str, str] = {
    "minimax": "mixtral", "minimax_m2": "mixtral", "mixtral": "mixtral",
    **dict.fromkeys(("Dots3NoteTextModel", "afmoe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1",
                     "ernie4_5_moe", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "glm4v_moe", "longcat_flash",
                     "solar_open", "mellum", "qwen3_moe", "beam", "qwen3_omni_moe", "qwen3_omni_moe_thinker",
                     "qwen3_omni_moe_text", "qwen3_next", "hunyuan_v1_moe", "flex_olmo", "olmoe", "sarvam_mla",
                     "exaone_moe", "cohere2_moe", "UnlimitedOcrTextModel"), "qwen2_moe"),
}
MOE_TARGETS: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
MOE_FUSED: dict[str, dict[str, tuple[str, ...]]] = {
    "mixtral": {"gate_up_proj": ("w1", "w3")},
    "qwen2_moe": {"gate_up_proj": ("gate_proj", "up_proj")},
}


# peft refuses LoRA on these modules of Mamba models (tuners_utils._check_lora_target_modules_mamba).
MAMBA_MODEL_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
MAMBA_INCOMPATIBLE = frozenset({"out_proj", "conv1d"})


def check_mamba(spec: ModelSpec, adapted: tuple[Linear, ...]) -> None:
    """Refuse, as peft does, LoRA on a Mamba model's out_proj or conv1d."""
    bad = sorted({l.leaf for l in adapted if l.leaf in MAMBA_INCOMPATIBLE})
    if bad and peft_model_type(spec) in MAMBA_MODEL_TYPES:
        raise PeftcalcError(f"peft refuses LoRA on {', '.join(bad)} of a Mamba model ({peft_model_type(spec)}): "
                            "pass --targets without them (e.g. the attention and MLP projections)")


def peft_model_type(spec: ModelSpec) -> str:
    """The model_type peft looks its tables up by: the built model's config (a multimodal checkpoint built whole
    is `gemma3`, its language model alone `gemma3_text`)."""
    return spec.derivation.model_type if spec.derivation is not None else spec.family


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


def unmatched(spec: ModelSpec, targets: Targets) -> list[str]:
    if isinstance(targets, str):
        return [] if any(_regex_layers(l, targets) for l in spec.linears) else [targets]
    return [t for t in targets if t != ALL_LINEAR and not any(matches(l, t) for l in spec.linears)]


def _regex_layers(lin: Linear, regex: str) -> list[str]:
    """The concrete names of `lin` a peft regex target full-matches."""
    pattern = re.compile(regex)
    return [n for n in expand_name(lin.name, lin.layers, lin.count) if pattern.fullmatch(n)]


def _select_regex(spec: ModelSpec, regex: str) -> tuple[Linear, ...]:
    """Linears a regex selects; a template some of whose layers match keeps just those layers."""
    out = []
    for lin in spec.linears:
        hit = set(_regex_layers(lin, regex))
        if not hit:
            continue
        if len(hit) == lin.count or "{i}" not in lin.name:
            out.append(lin)
        else:
            idx = tuple(i for i in layer_indices(lin.layers, lin.count) if lin.name.replace("{i}", str(i)) in hit)
            out.append(dataclasses.replace(lin, layers=idx, count=len(idx)))
    return tuple(out)


def select(spec: ModelSpec, targets: Targets, strict: bool = True) -> tuple[Linear, ...]:
    """The linears `targets` selects. Strict (user-given targets): every target must match something;
    otherwise (peft's defaults) like peft, only an empty selection is an error."""
    if targets == (ALL_LINEAR,):
        return tuple(l for l in spec.linears if not l.head)
    if isinstance(targets, str):
        chosen = _select_regex(spec, targets)
    else:
        chosen = tuple(l for l in spec.linears if any(matches(l, t) for t in targets))
    missing = unmatched(spec, targets)
    if (missing and strict) or not chosen:
        names = sorted({l.leaf for l in spec.linears})
        raise PeftcalcError(
            f"target module(s) {', '.join(missing) or targets} not found in {spec.name} ({spec.family}); "
            f"its linear layers are: {', '.join(names)}"
        )
    return chosen


def _leaves(spec: ModelSpec) -> set[str]:
    return {l.leaf for l in spec.linears if not l.head}


def fallback_targets(spec: ModelSpec) -> tuple[str, ...] | None:
    """The attention's query and value projections found in the model (or its fused qkv projection), for
    model types peft has no default for; None when there are none (a pure Mamba model ...)."""
    leaves = _leaves(spec)
    for pair in QUERY_VALUE_PAIRS:
        if set(pair) <= leaves:
            return pair
    return next(((f,) for f in FUSED_QKV if f in leaves), None)


def _no_default(spec: ModelSpec, method: str) -> PeftcalcError:
    return PeftcalcError(f"peft has no default {method} target modules for {peft_model_type(spec)} and peftcalc found "
                         f"no attention projections in {spec.name}; pass --targets (its linear layers: "
                         f"{', '.join(sorted(_leaves(spec)))})")


def default_lora_targets(spec: ModelSpec) -> tuple[Targets, str | None]:
    """peft's default LoRA targets for the model type, and a note when peft has none and peftcalc chose."""
    mt = peft_model_type(spec)
    if mt in LORA_DEFAULTS:
        return LORA_DEFAULTS[mt], None
    chosen = fallback_targets(spec)
    if chosen is None:
        raise _no_default(spec, "LoRA")
    return chosen, (f"peft has no default LoRA target modules for {mt}; peftcalc chose the attention projections "
                    f"{','.join(chosen)} found in the model (--targets to choose)")


def default_ia3_targets(spec: ModelSpec) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """peft's default IA3 targets and feed-forward modules; where peft has none, the query/value projections and
    the feed-forward output projection found in the model (scaled on its input, as peft does feed-forward ones)."""
    mt = peft_model_type(spec)
    if mt in IA3_DEFAULTS:
        return IA3_DEFAULTS[mt], IA3_FEEDFORWARD[mt], None
    attn = fallback_targets(spec)
    if attn is None:
        raise _no_default(spec, "IA3")
    leaves = _leaves(spec)
    ff = next(((f,) for f in FEEDFORWARD_OUT if f in leaves and f not in attn), ())
    chosen = attn + ff
    return chosen, ff, (f"peft has no default IA3 target modules for {mt}; peftcalc chose {','.join(chosen)} found in "
                        "the model" + (f" ({ff[0]} scaled on its input, as a feed-forward module)" if ff else "")
                        + " (--targets to choose)")


def moe_conversion(spec: ModelSpec, targets: Targets) -> tuple[Targets, dict[str, int]]:
    """peft's LoRA targets on a transformers 5 MoE model (_convert_peft_config_moe): target names that were v4
    expert or router linears become parameter targets (fused expert tensors, the router weight); returns the
    module targets left and {parameter suffix: rank multiple}. Other models: the targets unchanged."""
    base = MOE_CONVERSION.get(peft_model_type(spec))
    if base is None or isinstance(targets, str):
        return targets, {}
    mapping, fused = MOE_TARGETS[base], MOE_FUSED[base]
    wanted = (_leaves(spec) | set(mapping)) if targets == (ALL_LINEAR,) else set(targets)
    modules: list[str] = []
    params: dict[str, int] = {}
    present: dict[str, set[str]] = {}
    for t in sorted(wanted):
        old = next((o for o in mapping if t == o or t.endswith("." + o)), None)
        if old is None:
            modules.append(t)
            continue
        params[mapping[old]] = 1
        present.setdefault(mapping[old], set()).add(old)
    for new, olds in fused.items():
        have = present.get(new, set())
        if 0 < len(have) < len(olds):
            raise PeftcalcError(f"peft cannot target {', '.join(sorted(have))} without also targeting "
                                f"{', '.join(sorted(set(olds) - have))}: transformers 5 fuses them into {new}")
        if len(have) == len(olds) > 1:
            params[new] = len(olds)
    return tuple(modules), params


def parameter_targets(spec: ModelSpec, suffixes: dict[str, int]) -> tuple[tuple[Params, int], ...]:
    """The parameters (router weights, fused experts) peft matches by suffix, with their rank multiple."""
    return tuple((p, k) for p in spec.others for suffix, k in suffixes.items()
                 if (p.name == suffix or p.name.endswith("." + suffix)) and len(p.shape) in (2, 3))
