"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021). peft has no such method.

Each adapter is a down projection h -> b and an up projection b -> h, both with bias: 2hb + b + h
parameters (Houlsby et al., section 2.1). Houlsby puts two in every transformer block (after attention
and after the feed-forward), Pfeiffer one (after the feed-forward). The base model stays frozen; the
layer norms the Houlsby paper also trains are not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.model.spec import ModelSpec

Variant = Literal["houlsby", "pfeiffer"]
SITES: dict[str, tuple[str, ...]] = {"houlsby": ("attn_adapter", "ffn_adapter"), "pfeiffer": ("ffn_adapter",)}


@dataclass(frozen=True)
class BottleneckAdapter:
    bottleneck: int = 64
    variant: Variant = "houlsby"

    @property
    def name(self) -> str:
        return "adapter"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        if self.bottleneck <= 0:
            raise PeftcalcError(f"--bottleneck must be a positive integer, got {self.bottleneck}")
        if self.variant not in SITES:
            raise PeftcalcError(f"unknown adapter variant {self.variant!r}; choose houlsby or pfeiffer")
        h, b = spec.arch.hidden_size, self.bottleneck
        if b > h:
            raise PeftcalcError(f"--bottleneck {b} is wider than the hidden size {h}; an adapter must narrow")
        added: list[TensorGroup] = []
        for prefix, count in spec.layer_prefixes():
            for site in SITES[self.variant]:
                name = f"{prefix}.{site}"
                added += [
                    TensorGroup(name + ".down.weight", h * b, count, True, True, shape=(b, h)),
                    TensorGroup(name + ".down.bias", b, count, True, True),
                    TensorGroup(name + ".up.weight", b * h, count, True, True, shape=(h, b)),
                    TensorGroup(name + ".up.bias", h, count, True, True),
                ]
        return Adaptation("adapter", spec, base_tensors(spec, False) + tuple(added), saved=tuple(added),
                          saved_by_peft=False, notes=(f"{self.variant} bottleneck adapters of width {b} (not in peft; paper formula)",))
