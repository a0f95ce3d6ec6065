"""Named precision recipes: how weights are stored, what dtype the forward runs in, whether an fp32
master copy backs the trainable weights.

The dtype of a trainable tensor's gradient is its own; its optimizer states follow the master copy when
there is one, else the tensor itself (torch's AdamW keeps states in the parameter's dtype, so pure bf16
training has 4 B/param of Adam state, not 8). peft keeps adapter weights in fp32 whatever the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.errors import PeftcalcError


@dataclass(frozen=True)
class Precision:
    name: str
    param_dtype: str  # how base-model weights are stored
    compute_dtype: str  # the dtype of activations
    master: bool  # an fp32 master copy of trainable weights stored in a lower precision
    description: str
    adapter_dtype: str = "fp32"  # peft's autocast_adapter_dtype=True keeps adapters in fp32
    autocast: bool = False  # the forward runs under torch.autocast(compute dtype)

    def stored_dtype(self, added: bool) -> str:
        return self.adapter_dtype if added else self.param_dtype

    def has_master(self, added: bool) -> bool:
        return self.master and self.stored_dtype(added) != "fp32"

    def state_dtype(self, added: bool) -> str:
        return "fp32" if self.has_master(added) else self.stored_dtype(added)


RECIPES: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "fp32", "fp32", False, "everything in fp32 (the seed document's table)"),
        Precision("bf16-mixed", "bf16", "bf16", True,
                  "bf16 weights and gradients, fp32 master weights and optimizer states (ZeRO paper's mixed precision)"),
        Precision("fp16-mixed", "fp16", "fp16", True,
                  "fp16 weights and gradients, fp32 master weights and optimizer states, loss scaling"),
        Precision("bf16", "bf16", "bf16", False, "pure bf16: weights, gradients and optimizer states in bf16"),
        Precision("amp-bf16", "fp32", "bf16", False,
                  "fp32 weights, bf16 autocast compute (torch.autocast; HF Trainer bf16=True on an fp32 model)",
                  autocast=True),
        Precision("amp-fp16", "fp32", "fp16", False,
                  "fp32 weights, fp16 autocast compute and loss scaling (HF Trainer fp16=True on an fp32 model)",
                  autocast=True),
        Precision("bf16-autocast", "bf16", "bf16", False,
                  "bf16 weights, gradients and optimizer states, the forward under bf16 autocast (HF Trainer "
                  "bf16=True on a model loaded in bf16): fp32 adapters are cast to bf16 for each matmul",
                  autocast=True),
        Precision("bf16-true", "bf16", "bf16", False,
                  "everything in bf16, adapters included (litgpt --precision bf16-true, torchtune dtype: bf16)",
                  adapter_dtype="bf16"),
    )
}


def get_precision(name: str) -> Precision:
    try:
        return RECIPES[name]
    except KeyError:
        raise PeftcalcError(f"unknown precision {name!r}; known: {', '.join(RECIPES)}") from None
