"""Names the Hugging Face stack uses, mapped to peftcalc's terms: `optim` optimizer names (transformers'
OptimizerNames, which axolotl and LLaMA-Factory reuse), `attn_implementation` values and dtype names.

Optimizers: torch's AdamW keeps its states in the parameter's dtype and defaults to the foreach implementation
on CUDA (torch/optim/adamw.py, `_default_to_fused_or_foreach`); transformers' `adamw_torch_fused` passes
fused=True. bitsandbytes' 32-bit optimizers (`paged_adamw_32bit`, `lion_32bit`) keep fp32 states whatever the
parameter dtype (bitsandbytes/optim/optimizer.py, Optimizer2State.init_state: optim_bits 32 -> torch.float32).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerChoice:
    optimizer: str | None  # a peftcalc optimizer; None: not modelled
    adamw_impl: str | None = None
    state_dtype: str | None = None  # set when the library keeps states in a dtype other than the parameter's
    note: str = ""


_PAGED = "paged: states in CUDA unified memory, evictable to the CPU under pressure (counted on the GPU here)"
_TORCHAO = "torchao's blockwise 8-bit states, counted as bitsandbytes' (both keep 8-bit codes + a scale per block)"

HF_OPTIMIZERS: dict[str, OptimizerChoice] = {
    "adamw_torch": OptimizerChoice("adamw", "foreach"),
    "adamw_torch_fused": OptimizerChoice("adamw", "fused"),
    "adamw_torch_xla": OptimizerChoice("adamw", "foreach"),
    "adamw_torch_npu_fused": OptimizerChoice("adamw", "fused"),
    "adamw_hf": OptimizerChoice("adamw", "forloop"),
    "adamw_bnb_8bit": OptimizerChoice("adamw-8bit"),
    "adamw_8bit": OptimizerChoice("adamw-8bit"),
    "paged_adamw_8bit": OptimizerChoice("paged-adamw-8bit"),
    "paged_adamw_32bit": OptimizerChoice("adamw", "fused", "fp32", _PAGED),
    "paged_adamw": OptimizerChoice("adamw", "fused", "fp32", _PAGED),
    "adamw_torch_8bit": OptimizerChoice("adamw-8bit", note=_TORCHAO),
    "ao_adamw_8bit": OptimizerChoice("adamw-8bit", note=_TORCHAO),
    "adafactor": OptimizerChoice("adafactor"),
    "sgd": OptimizerChoice("sgd"),
    "lion_32bit": OptimizerChoice("lion", state_dtype="fp32"),
    "paged_lion_32bit": OptimizerChoice("lion", state_dtype="fp32", note=_PAGED),
}
# transformers >= 4.55 on torch >= 2.8: TrainingArguments.optim defaults to adamw_torch_fused (training_args.py).
HF_DEFAULT_OPTIM = "adamw_torch_fused"


def optimizer_choice(name: str) -> OptimizerChoice:
    return HF_OPTIMIZERS.get(str(name).lower(), OptimizerChoice(None, note=f"{name}: not an optimizer peftcalc "
                                                                         "models (its state bytes differ)"))


# attn_implementation values (transformers AttentionInterface, axolotl's enum, kernels-hub names)
FLASH = "flash_attention_2"


def attention_of(value: str) -> tuple[str, str]:
    """peftcalc's attention kernel for an `attn_implementation` value, with a word when it is an approximation."""
    v = str(value).lower()
    if v in ("eager", "sdpa", "flex_attention"):
        return v, ""
    if v.startswith(("flash_attention", "kernels-community/flash-attn", "kernels-community/vllm-flash-attn")):
        return FLASH, "" if v == FLASH else f"{value}: counted as flash_attention_2 (no S x S scores kept)"
    return "sdpa", f"{value}: counted as sdpa (a fused kernel that keeps no S x S scores)"


DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
          "float32": "fp32", "fp32": "fp32", "float": "fp32", "auto": "auto"}
