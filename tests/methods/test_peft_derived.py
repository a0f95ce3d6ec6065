"""Every peft tuner peftcalc derives from peft (`--method loha`, `vera`, `oft` ...), checked against peft applied by
the test itself to the real model with real CPU weights (peftcalc derives on the meta device): the same trainable
and total counts (get_nb_trainable_parameters), the same checkpoint keys and shapes (get_peft_model_state_dict)
and the same adapter_model.safetensors size, to the byte (save_pretrained).
Also: the method list covers every peft tuner type (derived, an alias of peftcalc's own, or refused with a reason),
options are validated against the peft config class, and a second derivation is read from the cache.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftType, get_peft_model, get_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from transformers import AutoConfig, AutoModelForCausalLM

from peftcalc.checkpoint import checkpoint_bytes
from peftcalc.errors import PeftcalcError
from peftcalc.methods import METHODS, MethodOptions, make_method
from peftcalc.methods.peft_catalogue import ALIASES, PEFT_METHODS, REFUSED
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec
from peftcalc.precision import get_precision

# Wide enough for every method's default sizes (VB-LoRA's vector length 256, C3A's block 256, RoAd's group 64).
ARCHS = {
    "llama": dict(model_type="llama", hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=128, max_position_embeddings=64),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=128, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=256, max_position_embeddings=64),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=128,
                        max_position_embeddings=64),
}
# Fields without a usable default: what each such method needs (peftcalc asks for them too).
REQUIRED = {"adalora": {"total_step": 100}, "adaption_prompt": {"adapter_len": 4, "adapter_layers": 1},
            "trainable_tokens": {"token_indices": [1, 2, 3]}}
SLOW_ARCHS = {"qwen3_moe", "gemma3_text"}
SLOW_METHODS = {"osf", "tinylora", "psoft"}  # their initialisation decomposes the real CPU weights (seconds each)


def cases() -> list[Any]:
    return [pytest.param(m, a, id=f"{m}-{a}", marks=[pytest.mark.slow] if a in SLOW_ARCHS or m in SLOW_METHODS else [])
            for a in ARCHS for m in sorted(PEFT_METHODS)]


def spec_of(arch: str) -> ModelSpec:
    return spec_from_config(ARCHS[arch], f"tiny-{arch}", "tests/methods/test_peft_derived.py")


def real_model(arch: str) -> torch.nn.Module:
    cfg = dict(ARCHS[arch])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))


def peft_on_cpu(name: str, arch: str, targets: list[str] | None) -> Any:
    """peft applied the ordinary way: real CPU weights, the config's defaults, the required fields."""
    kw = dict(REQUIRED.get(name, {}))
    if PEFT_METHODS[name].prompt:
        kw["num_virtual_tokens"] = 20
    if targets is not None:
        kw["target_modules"] = targets
    cfg = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name.upper()]](task_type="CAUSAL_LM", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(real_model(arch), cfg)


def ours(name: str, arch: str) -> Any:
    opts = tuple((k, json.dumps(v)) for k, v in REQUIRED.get(name, {}).items())
    return make_method(name, MethodOptions(peft_options=opts)).adapt(spec_of(arch))


@pytest.mark.parametrize("name,arch", cases())
def test_counts_and_checkpoint_equal_peft(name: str, arch: str, tmp_path: Path) -> None:
    try:
        a = ours(name, arch)
    except PeftcalcError as e:
        # peftcalc refuses exactly when peft does (e.g. LLaMA-Adapter on a model type it does not support)
        with pytest.raises(Exception):
            peft_on_cpu(name, arch, None)
        pytest.skip(f"peft and peftcalc both refuse: {e}")
    chose = [n for n in a.notes if "peftcalc chose" in n]
    targets = sorted({t.rsplit(".", 1)[-1] for t in a.adapted}) if chose else None
    pm = peft_on_cpu(name, arch, targets)
    assert (a.params.trainable, a.params.total) == pm.get_nb_trainable_parameters()
    saved = {n: tuple(g.shape or (g.numel,)) for g in a.saved for n in g.names()}
    real = {k: tuple(v.shape) or (1,) for k, v in get_peft_model_state_dict(pm).items()}
    assert saved == real
    pm.save_pretrained(tmp_path)  # the file peft writes, to the byte (fp32 model: adapters in fp32 too)
    assert checkpoint_bytes(a, get_precision("fp32")) == (tmp_path / "adapter_model.safetensors").stat().st_size


def test_every_peft_tuner_type_is_derived_aliased_or_refused_with_a_reason() -> None:
    types = {t.value.lower() for t in PeftType}
    ours_ = set(PEFT_METHODS) | {a for a in ALIASES if a != "bone"} | set(REFUSED) | {"lora", "ia3"}
    assert types == ours_
    assert all(ALIASES[a] in METHODS or ALIASES[a] in PEFT_METHODS for a in ALIASES)
    assert all(len(r) > 40 for r in REFUSED.values())


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_methods_say_why(name: str) -> None:
    with pytest.raises(PeftcalcError, match="cannot be sized from a config"):
        make_method(name)


def test_bad_peft_options_name_the_valid_fields() -> None:
    spec = spec_of("llama")
    with pytest.raises(PeftcalcError, match="LoHaConfig has no such field.*rank_dropout"):
        make_method("loha", MethodOptions(peft_options=(("no_such_field", "1"),))).adapt(spec)
    with pytest.raises(PeftcalcError, match="needs --peft-option total_step"):
        make_method("adalora").adapt(spec)
    with pytest.raises(PeftcalcError, match="--rank: ln_tuning has no rank"):
        make_method("ln_tuning", MethodOptions(rank=4, rank_given=True)).adapt(spec)
    with pytest.raises(PeftcalcError, match="applies to methods derived from peft"):
        make_method("lora", MethodOptions(peft_options=(("r", "4"),)))


def test_rank_and_options_reach_peft() -> None:
    spec = spec_of("llama")
    r4 = make_method("loha", MethodOptions(rank=4, rank_given=True)).adapt(spec).params.trainable
    r8 = make_method("loha", MethodOptions(rank=8, rank_given=True)).adapt(spec).params.trainable
    assert r8 == 2 * r4
    wide = make_method("vera", MethodOptions(peft_options=(("target_modules", '["q_proj","k_proj","v_proj"]'),)))
    assert len(wide.adapt(spec).adapted) == 3


def test_a_second_derivation_comes_from_the_cache() -> None:
    spec = spec_of("llama")
    first = make_method("oft").adapt(spec)
    cached = list((Path(__import__("os").environ["XDG_CACHE_HOME"]) / "peftcalc" / "adaptations").glob("oft-*.json"))
    assert cached
    import peftcalc.measure.peft_derive as derive_module

    original, derive_module.derive_adaptation = derive_module.derive_adaptation, None  # type: ignore[assignment]
    try:
        assert make_method("oft").adapt(spec).params == first.params
    finally:
        derive_module.derive_adaptation = original
