"""Full fine-tuning: every weight trains, the checkpoint is the whole model."""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.methods.base import Adaptation, base_tensors
from peftcalc.model.spec import ModelSpec


@dataclass(frozen=True)
class Full:
    @property
    def name(self) -> str:
        return "full"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        tensors = base_tensors(spec, trainable=True)
        return Adaptation("full", spec, tensors, saved=tensors, save_full_model=True, trains_base=True,
                          saved_by_peft=False)
