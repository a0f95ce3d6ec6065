"""Every architecture of tests/data/tiny_architectures.json (37 transformers model types, built from transformers'
own config classes at tiny sizes; Qwen2.5-VL among them, a multimodal checkpoint whose language model has no
causal-LM class of its own) through peftcalc's real resolution path (a hand-written family where one exists, else the
derived inventory), checked against transformers and peft themselves:

- the parameter total and every parameter name equal the model transformers builds (named_parameters, tied
  weights once), the buffers' bytes equal its buffers';
- LoRA on peft's default targets (peft chooses them: target_modules=None) and on all-linear trains exactly what
  peft's get_nb_trainable_parameters() says, on exactly the modules peft wraps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import ParamWrapper
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_LORA
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSeq2SeqLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from peftcalc.memory import buffer_bytes
from peftcalc.methods import MethodOptions, make_method
from peftcalc.errors import PeftcalcError
from peftcalc.methods.targets import MAMBA_MODEL_TYPES, MOE_CONVERSION, peft_model_type
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec, expand_name
from peftcalc.precision import get_precision

ARCHS: dict[str, dict[str, Any]] = {k: v for k, v in json.loads(
    (Path(__file__).parents[1] / "data" / "tiny_architectures.json").read_text()).items() if not k.startswith("_")}


def transformers_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """The model as transformers builds it: the causal LM (of the text config, for a multimodal checkpoint's
    default text-only scope; the image-text-to-text model when the language model has no causal-LM class of its
    own, as Qwen2.5-VL's) or the seq2seq LM, on the meta device, in fp32."""
    rest = {k: v for k, v in cfg.items() if k != "model_type"}
    config = AutoConfig.for_model(cfg["model_type"], **json.loads(json.dumps(rest)))
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    if "text_config" in config.sub_configs:
        text = config.get_text_config(decoder=True)
        if text.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            config = text
        else:
            cls = AutoModelForImageTextToText
    with torch.device("meta"):
        return cls.from_config(config)


def spec_of(arch: str) -> ModelSpec:
    return spec_from_config(ARCHS[arch], f"tiny-{arch}", "tests/data/tiny_architectures.json")


def inventory_names(spec: ModelSpec) -> set[str]:
    """Every parameter name the inventory stands for (a derived inventory names each tensor)."""
    names: set[str] = set()
    for lin in spec.linears:
        if not lin.tied:
            names |= set(expand_name(lin.name + ".weight", lin.layers, lin.count))
        if lin.bias:
            names |= set(expand_name(lin.name + ".bias", lin.layers, lin.count))
    for p in spec.others:
        names |= set(expand_name(p.name, p.layers, p.count))
    return names


def test_at_least_25_architectures_and_the_hybrid_and_moe_kinds() -> None:
    assert len(ARCHS) >= 25
    kinds = {spec_of(a).arch.attention_layers is not None for a in ("qwen3_next", "nemotron_h", "jamba", "lfm2")}
    assert kinds == {True}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_inventory_equals_transformers(arch: str) -> None:
    spec = spec_of(arch)
    model = transformers_model(ARCHS[arch])
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    if spec.origin == "derived":
        assert inventory_names(spec) == {n for n, _ in model.named_parameters()}
        fp32 = get_precision("fp32")
        real = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
        assert buffer_bytes(make_method("full").adapt(spec), fp32) == real


def peft_lora(spec: ModelSpec, cfg: dict[str, Any], targets: Any) -> Any:
    task = "SEQ_2_SEQ_LM" if spec.arch.kind == "encoder-decoder" else "CAUSAL_LM"
    with torch.device("meta"):
        return get_peft_model(transformers_model(cfg), LoraConfig(task_type=task, r=4, target_modules=targets))


def peft_wrapped(pm: Any) -> set[str]:
    return {n for n, m in pm.get_base_model().named_modules() if isinstance(m, BaseTunerLayer)
            and not isinstance(m, ParamWrapper)}


def adapted_names(spec: ModelSpec, templates: tuple[str, ...]) -> set[str]:
    by_name = {}
    for lin in spec.linears:
        by_name.setdefault(lin.name, set()).update(expand_name(lin.name, lin.layers, lin.count))
    return set().union(*(by_name[t] for t in templates)) if templates else set()


@pytest.mark.parametrize("targets", ["default", "all-linear"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_lora_counts_equal_peft(arch: str, targets: str) -> None:
    """Default targets: where peft has a default for the model type, peft picks it (target_modules=None) and
    peftcalc must agree; where it has none, peftcalc's choice (stated in a note) is given to peft explicitly."""
    spec = spec_of(arch)
    if targets == "all-linear" and peft_model_type(spec) in MAMBA_MODEL_TYPES:
        with pytest.raises(PeftcalcError, match="peft refuses LoRA on out_proj"):
            make_method("lora", MethodOptions(rank=4, targets=("all-linear",))).adapt(spec)
        with pytest.raises(ValueError, match="incompatible with Mamba"):
            peft_lora(spec, ARCHS[arch], "all-linear")
        return
    if targets == "all-linear":
        ours, theirs = make_method("lora", MethodOptions(rank=4, targets=("all-linear",))).adapt(spec), "all-linear"
    else:
        ours = make_method("lora", MethodOptions(rank=4)).adapt(spec)
        known = peft_model_type(spec) in PEFT_LORA
        assert known or any("peft has no default LoRA target modules" in n for n in ours.notes)
        theirs = None if known else [t.rsplit(".", 1)[-1] for t in ours.adapted]
        if known and peft_model_type(spec) in MOE_CONVERSION:  # peft cannot apply its own default there (see note)
            assert any("cannot apply its own default targets" in n for n in ours.notes)
            with pytest.raises(Exception, match="No `target_modules` passed"):
                peft_lora(spec, ARCHS[arch], None)
            theirs = list(PEFT_LORA[peft_model_type(spec)])
    pm = peft_lora(spec, ARCHS[arch], theirs)
    assert (ours.params.trainable, ours.params.total) == pm.get_nb_trainable_parameters()
    assert adapted_names(spec, ours.adapted) == peft_wrapped(pm)
