"""Model-state bytes, exact: weights, gradients, master weights and optimizer states of an Adaptation.

Every quantity is a sum over the adaptation's tensor groups, so "total = sum of parts" holds by
construction and each part can be checked to the byte against a traced step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.methods.base import Adaptation, TensorGroup
from peftcalc.optim import get_optimizer
from peftcalc.precision import Precision
from peftcalc.quant import int8_bytes, nf4_bytes
from peftcalc.units import dtype_bytes


@dataclass(frozen=True)
class ModelStates:
    weight_bytes: int
    gradient_bytes: int
    master_weight_bytes: int
    optimizer_state_bytes: int
    largest_trainable_bytes: int  # the biggest single trainable tensor (optimizer temporaries scale with it)
    trainable_weight_bytes: int  # bytes of the trainable weights (foreach AdamW copies them once)

    @property
    def total(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.master_weight_bytes + self.optimizer_state_bytes


def tensor_bytes(g: TensorGroup, precision: Precision) -> int:
    """Bytes of one tensor of the group as stored."""
    if g.storage == "nf4":
        return nf4_bytes(g.numel)
    if g.storage == "int8":
        return int8_bytes(g.numel, g.shape[0] if g.shape else 1)
    return g.numel * dtype_bytes(precision.stored_dtype(g.added))


@lru_cache(maxsize=4096)
def model_states(adaptation: Adaptation, precision: Precision, optimizer: str) -> ModelStates:
    opt = get_optimizer(optimizer)
    weights = grads = master = states = largest = trainable_w = 0
    for g in adaptation.tensors:
        one = tensor_bytes(g, precision)
        weights += one * g.count
        if not g.trainable:
            continue
        trainable_w += one * g.count
        largest = max(largest, one)
        grads += one * g.count  # a gradient has its parameter's dtype and shape
        if precision.has_master(g.added):
            master += g.numel * 4 * g.count
        states += opt.state_bytes(g, precision.state_dtype(g.added)) * g.count
    return ModelStates(weights, grads, master, states, largest, trainable_w)
