"""The real model of a spec with the method applied: transformers builds it, peft (or our bottleneck adapters)
adapts it, in the precision recipe's storage dtype, on any device (`meta` included)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftcalc.errors import PeftcalcError
from peftcalc.measure.hf_model import build_model
from peftcalc.methods.adapter import BottleneckAdapter
from peftcalc.methods.base import Adaptation, Method
from peftcalc.methods.full import Full
from peftcalc.model.spec import ModelSpec
from peftcalc.precision import get_precision
from peftcalc.setup import Setup

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _expand(template: str, count: int) -> list[str]:
    return [template.replace("{i}", str(i)) for i in range(count)] if "{i}" in template else [template]


def quantized_modules(adaptation: Adaptation) -> tuple[str, set[str]]:
    """The weight format and the module names of the base weights a QLoRA adaptation quantizes."""
    formats = {g.format for g in adaptation.tensors if g.format != "dense"}
    names = {n.removesuffix(".weight") for g in adaptation.tensors if g.format != "dense"
             for n in _expand(g.name, g.count)}
    return (formats.pop() if formats else "dense"), names


def build_adapted(spec: ModelSpec, method: Method, setup: Setup, device: str | torch.device = "meta"
                  ) -> tuple[nn.Module, Adaptation, list[str]]:
    """The transformers model of `spec` on `device`, in the recipe's storage dtype, with `method` applied."""
    precision = get_precision(setup.precision)
    adaptation = method.adapt(spec)
    notes: list[str] = []
    if spec.arch.num_experts and precision.param_dtype != "bf16":
        raise PeftcalcError(f"{spec.name} is a mixture of experts: transformers 5 runs its experts with grouped_mm, "
                            "which takes bf16 weights only; use --precision bf16 or bf16-mixed")
    overrides: dict[str, Any] = {"use_cache": False, "dtype": DTYPES[precision.param_dtype],
                                 "_attn_implementation": setup.attention}
    try:
        model = build_model(spec, str(device), **overrides)
    except (ValueError, ImportError) as e:
        if setup.attention != "eager" and "attn_implementation" in str(e):
            raise PeftcalcError(f"{spec.family} has no {setup.attention} attention in this transformers version; "
                                "use --attention eager") from None
        raise
    if spec.is_inferred:
        notes.append("the measured model is the inferred shape; the unattributed remainder of --params is not built")
    if spec.arch.num_experts:
        notes.append("MoE experts run transformers' grouped_mm implementation: every (token, expert) pair of the "
                     "top-k routing goes through one grouped GEMM, so memory does not depend on how tokens are routed")
    fmt, qnames = quantized_modules(adaptation)
    if fmt != "dense":
        from peftcalc.measure.qlinear import quantize_linears

        quantize_linears(model, qnames, fmt, DTYPES[precision.compute_dtype])
        notes.append(f"QLoRA base emulated without bitsandbytes: each {fmt} weight is a packed "
                     f"{'uint8' if fmt == 'nf4' else 'int8'} tensor with bitsandbytes' constants, dequantized "
                     "per layer in forward and backward (see peftcalc/measure/qlinear.py)")
        if spec.arch.num_experts:
            notes.append("fused MoE expert tensors stay unquantized (not nn.Linear)")
    model = apply_method(model, spec, method, precision.adapter_dtype == "fp32")
    return model, adaptation, notes


def apply_method(model: nn.Module, spec: ModelSpec, method: Method, fp32_adapters: bool = True) -> nn.Module:
    """`fp32_adapters`: peft's autocast_adapter_dtype (its default True keeps adapters in fp32; False leaves them
    in the base weights' dtype, as litgpt and torchtune keep them)."""
    if isinstance(method, Full):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if isinstance(method, BottleneckAdapter):
        from peftcalc.measure.adapters import inject_adapters

        inject_adapters(model, spec, method)
        return model
    from peft import get_peft_model

    from peftcalc.measure.peft_config import peft_config

    cfg = peft_config(method, spec)
    if cfg is None:
        raise PeftcalcError(f"method {method.name!r} has no measured implementation")
    return get_peft_model(model, cfg, autocast_adapter_dtype=fp32_adapters)


def model_has_prefix(model: nn.Module) -> bool:
    cfg = getattr(model, "peft_config", None)
    return isinstance(cfg, dict) and any(getattr(c, "peft_type", None) is not None and c.peft_type.value == "PREFIX_TUNING"
                                         for c in cfg.values())


def base_model(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


