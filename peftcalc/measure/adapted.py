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


def build_adapted(spec: ModelSpec, method: Method, setup: Setup, device: str | torch.device = "meta"
                  ) -> tuple[nn.Module, Adaptation, list[str]]:
    """The transformers model of `spec` on `device`, in the recipe's storage dtype, with `method` applied."""
    precision = setup.recipe  # the adapter dtype a setup asks for included
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
    if adaptation.quantization is not None:
        model = _quantized_base(model, adaptation, setup, device, notes)
    model = apply_method(model, spec, method, precision.adapter_dtype == "fp32")
    return model, adaptation, notes


def _quantized_base(dense: nn.Module, adaptation: Adaptation, setup: Setup, device: str | torch.device,
                    notes: list[str]) -> nn.Module:
    """The model loaded again through transformers with a BitsAndBytesConfig, then (by default) prepared as
    peft's prepare_model_for_kbit_training does (peftcalc/measure/quantize.py)."""
    import bitsandbytes

    from peftcalc.measure.quantize import TRACED_NOTE, load_quantized, prepare_kbit, quantized_modules

    precision = get_precision(setup.precision)
    q = adaptation.quantization
    assert q is not None
    expected = quantized_modules(adaptation)
    model = load_quantized(dense, q, DTYPES[precision.param_dtype], precision.compute_dtype, device, expected)
    del dense
    built = {name for name, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")}
    if built != expected:
        missing, extra = sorted(expected - built)[:3], sorted(built - expected)[:3]
        raise PeftcalcError(f"transformers quantized other modules than peftcalc's inventory says (not quantized: "
                            f"{', '.join(missing) or '-'}; also quantized: {', '.join(extra) or '-'})")
    notes.append(f"base quantized by bitsandbytes {bitsandbytes.__version__} ({q.label}) through transformers' "
                 "BitsAndBytesConfig")
    if str(device) == "meta":
        notes.append(TRACED_NOTE)
    if setup.kbit_preparation and adaptation.spec.arch.num_experts:
        raise PeftcalcError(f"{adaptation.spec.name}: prepare_model_for_kbit_training casts the fused MoE experts to "
                            "fp32 and transformers 5 runs them with grouped_mm, which takes bf16 only; "
                            "use --no-kbit-preparation")
    if setup.kbit_preparation:
        model = prepare_kbit(model, setup)
        ckpt = "" if not setup.kbit_gradient_checkpointing else ", gradient checkpointing on" + \
            ("" if setup.gradient_checkpointing else " (peft's default; torch's default reentrant variant)")
        notes.append(f"peft's prepare_model_for_kbit_training: every non-quantized parameter in fp32{ckpt}")
    return model


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


