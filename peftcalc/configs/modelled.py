"""Setup values a config can ask for that the estimate does not model yet, and what it computes instead.

Their behaviour is other work in progress (attention kernels, loss variants, packing, reentrant checkpointing,
optimizer state dtype: the GPU-evidence issue; kbit preparation: the QLoRA issue; parameter offload: the cluster issue). Until it lands, a value read from a file is reported as "not modelled" and the
estimate is computed with the fallback, so the setup printed is the one computed. A test checks each entry
still changes nothing; when a behaviour lands that test fails and the entry goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fallback:
    setting: str  # the command-line keyword (Settings field)
    values: tuple[Any, ...] | None  # the values not modelled (None: any value)
    instead: Any  # what the estimate computes with (None: the command's default)
    why: str


FALLBACKS: tuple[Fallback, ...] = (
    Fallback("attention", ("flash_attention_2", "flex_attention"), "sdpa",
             "computed as sdpa (both keep no S x S scores; the kernels' own buffers are not modelled yet)"),
    Fallback("loss", ("chunked", "fused"), "standard",
             "computed with the standard loss over full logits (an over-estimate of the loss peak)"),
    Fallback("packing", (True,), False, "computed as rows of --seq tokens without packing's position ids"),
    Fallback("reentrant_checkpointing", (True,), False, "computed as non-reentrant checkpointing"),
    Fallback("kbit_preparation", None, None, "its fp32 upcast of the weights left unquantized is left out"),
    Fallback("optimizer_state_dtype", None, None, "states counted in the parameter's dtype"),
    Fallback("offload_params", (True,), False, "parameters counted on the GPU (optimizer offload only)"),
    Fallback("quant_type", ("fp4",), None, "counted as nf4"),
    Fallback("double_quant", (False,), None, "counted with double quantization"),
    Fallback("quant_storage", ("bf16", "fp16", "fp32"), None, "counted in uint8 storage (the same bytes for the codes)"),
    Fallback("lora_dropout", None, None, "the dropout's kept input is left out"),
    Fallback("padded", (True,), None, "counted as full rows without an attention mask"),
)


def fallback(setting: str, value: Any) -> Fallback | None:
    """The fallback for `setting` = `value`, when the estimate does not model that value."""
    for f in FALLBACKS:
        if f.setting == setting and (f.values is None or value in f.values):
            return f
    return None
