"""Build the real transformers model of a ModelSpec from its config: random weights, never a download."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSeq2SeqLM)

from peftcalc.model.spec import ModelSpec

AUTO_CLASS = {
    "decoder": AutoModelForCausalLM,
    "encoder-decoder": AutoModelForSeq2SeqLM,
    "encoder": AutoModelForMaskedLM,  # the pretraining head, as the checkpoints ship it
}


def hf_config(spec: ModelSpec) -> Any:
    """The transformers config object of a spec (its config.json, read by transformers)."""
    cfg = dict(spec.hf_config)
    model_type = cfg.pop("model_type")
    for key in ("architectures", "transformers_version", "_name_or_path", "auto_map", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


def build_model(spec: ModelSpec, device: str = "meta", **config_overrides: Any) -> torch.nn.Module:
    """The transformers model for `spec`, created on `device` (meta: no memory, any size). A derived spec is
    built as its inventory was (measure/derive.py: the same class and scope), with the keep-in-fp32 plan
    from_pretrained applies."""
    if spec.derivation is not None:
        return _build_derived(spec, device, **config_overrides)
    cfg = hf_config(spec)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    with torch.device(device):
        model = AUTO_CLASS[spec.arch.kind].from_config(cfg)
        _untie_heads(spec, model)
    return model


def _untie_heads(spec: ModelSpec, model: torch.nn.Module) -> None:
    """Give an untied output head its own weight. transformers 5 forces T5/mT5 configs to tie, and only
    from_pretrained unties them when the checkpoint has its own lm_head (T5 v1.1, Flan-T5, T0, mT0 do)."""
    embedding = model.get_input_embeddings().weight
    for lin in spec.linears:
        if lin.head and not lin.tied:
            module = model.get_submodule(lin.name)
            if module.weight is embedding:
                module.weight = torch.nn.Parameter(torch.empty_like(embedding))


def _build_derived(spec: ModelSpec, device: str, **config_overrides: Any) -> torch.nn.Module:
    from peftcalc.measure.derive import apply_dtype_plan, build_plan, config_object

    assert spec.derivation is not None
    auto, cfg, _, _ = build_plan(config_object(spec.hf_config), spec.derivation.scope)
    dtype = config_overrides.pop("dtype", torch.float32)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    with torch.device(device):
        model = auto.from_config(cfg, dtype=dtype)
    apply_dtype_plan(model, dtype)
    return model
