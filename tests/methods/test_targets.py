"""peftcalc's copies of peft's target tables and transformers' MoE conversion tables equal the installed ones, and
the fallback (peft has no default for the model type) names what it chose."""

from __future__ import annotations

import peft.utils.constants as constants
import pytest
from peft.utils import transformers_weight_conversion as conversion
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from peftcalc.errors import PeftcalcError
from peftcalc.methods.targets import (IA3_DEFAULTS, IA3_FEEDFORWARD, LORA_DEFAULTS, MAMBA_INCOMPATIBLE,
                                      MAMBA_MODEL_TYPES, MOE_CONVERSION, MOE_FUSED, MOE_TARGETS, PEFT_VERSION,
                                      default_ia3_targets, default_lora_targets)
from peftcalc.model.spec import Architecture, Linear, ModelSpec


def as_tuples(mapping: dict) -> dict:
    return {k: (v if isinstance(v, str) else tuple(v)) for k, v in mapping.items()}


def test_the_installed_peft_is_the_one_copied() -> None:
    import peft

    assert peft.__version__.startswith(PEFT_VERSION)


def test_lora_and_ia3_tables_equal_peft() -> None:
    assert LORA_DEFAULTS == as_tuples(constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    assert IA3_DEFAULTS == as_tuples(constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)
    assert IA3_FEEDFORWARD == as_tuples(constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING)


def test_moe_conversion_tables_equal_transformers_and_peft() -> None:
    """The model types peft converts: those transformers maps to a pattern peft has targets for (and that have a
    checkpoint conversion, which peft requires)."""
    expected = {t: base for t, base in conversion._MODEL_TO_CONVERSION_PATTERN.items()
                if base in conversion._MOE_TARGET_MODULE_MAPPING and get_checkpoint_conversion_mapping(t) is not None}
    assert MOE_CONVERSION == expected
    assert MOE_TARGETS == conversion._MOE_TARGET_MODULE_MAPPING
    assert MOE_FUSED == {k: {n: tuple(v) for n, v in f.items()} for k, f in conversion._MOE_FUSED_TARGETS.items()}


def test_mamba_refusal_equals_peft() -> None:
    import inspect

    from peft.tuners.tuners_utils import _check_lora_target_modules_mamba

    src = inspect.getsource(_check_lora_target_modules_mamba)
    assert all(f'"{t}"' in src for t in MAMBA_MODEL_TYPES | MAMBA_INCOMPATIBLE)


def spec_with(leaves: list[str], family: str = "made_up") -> ModelSpec:
    arch = Architecture(family, "decoder", 64, 2, 4, 4, 16, 128, 100, True, False, "rmsnorm")
    lins = tuple(Linear(f"model.layers.{{i}}.{leaf}", 64, 64, False, 2) for leaf in leaves)
    return ModelSpec("made-up", arch, lins + (Linear("lm_head", 64, 100, False, head=True),), (), "test")


@pytest.mark.parametrize("leaves,chosen", [
    (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"], ("q_proj", "v_proj")),
    (["self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_b_proj", "mlp.down_proj"], ("q_b_proj", "kv_b_proj")),
    (["self_attn.qkv_proj", "mlp.gate_up_proj"], ("qkv_proj",)),
])
def test_fallback_names_the_attention_projections_it_chose(leaves: list[str], chosen: tuple[str, ...]) -> None:
    targets, note = default_lora_targets(spec_with(leaves))
    assert targets == chosen and note and "peft has no default LoRA target modules for made_up" in note
    ia3, ff, note3 = default_ia3_targets(spec_with(leaves))
    assert ia3[: len(chosen)] == chosen and note3


def test_no_attention_projection_asks_for_targets() -> None:
    with pytest.raises(PeftcalcError, match="pass --targets"):
        default_lora_targets(spec_with(["mixer.in_proj", "mixer.out_proj"]))
