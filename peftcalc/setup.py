"""The training setup an estimate assumes: everything except the model and the method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftcalc.errors import PeftcalcError

Attention = Literal["sdpa", "eager"]
AdamWImpl = Literal["forloop", "foreach", "fused"]


@dataclass(frozen=True)
class Setup:
    precision: str = "fp32"
    optimizer: str = "adamw"
    batch_size: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = False
    attention: Attention = "sdpa"
    num_gpus: int = 1
    zero_stage: int = 0
    offload: bool = False
    adamw_impl: AdamWImpl = "foreach"  # torch's default on CUDA

    def __post_init__(self) -> None:
        for field_name, flag in (("batch_size", "--batch"), ("seq_len", "--seq"), ("num_gpus", "--gpus")):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PeftcalcError(f"{flag} must be a positive integer, got {value!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise PeftcalcError(f"--zero must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.attention not in ("sdpa", "eager"):
            raise PeftcalcError(f"--attention must be sdpa or eager, got {self.attention!r}")
        if self.adamw_impl not in ("forloop", "foreach", "fused"):
            raise PeftcalcError(f"--adamw-impl must be forloop, foreach or fused, got {self.adamw_impl!r}")
        if self.offload and self.zero_stage == 0:
            raise PeftcalcError("--offload moves optimizer states to CPU memory as ZeRO-Offload does: give --zero 1, 2 or 3")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len
