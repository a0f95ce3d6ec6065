"""Optimizer state bytes per trainable tensor, per optimizer.

States are kept in `state_dtype` (see precision.py), except where an optimizer quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import TensorGroup
from peftcalc.units import dtype_bytes

# bitsandbytes 8-bit optimizers: blockwise-quantized states (Dettmers et al. 2021, arXiv:2110.02861), one fp32
# absmax per block of 256 values; tensors smaller than min_8bit_size=4096 keep 32-bit states.
BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096


def _adam(g: TensorGroup, state_dtype: str) -> int:
    return 2 * g.numel * dtype_bytes(state_dtype)  # exp_avg, exp_avg_sq (Loshchilov & Hutter 2019)


def _adam_8bit(g: TensorGroup, state_dtype: str) -> int:
    if g.numel < BNB_MIN_8BIT_SIZE:
        return 2 * g.numel * 4
    return 2 * (g.numel + 4 * -(-g.numel // BNB_BLOCK))


def _sgd(g: TensorGroup, state_dtype: str) -> int:
    return 0


def _one_state(g: TensorGroup, state_dtype: str) -> int:
    return g.numel * dtype_bytes(state_dtype)  # SGD momentum buffer; Lion's exp_avg (Chen et al. 2023)


def _adafactor(g: TensorGroup, state_dtype: str) -> int:
    """Factored second moment, no first moment (Shazeer & Stern 2018; transformers' Adafactor defaults):
    row and column statistics for matrices, the full square for vectors."""
    if len(g.shape) >= 2:
        *lead, rows, cols = g.shape
        n = 1
        for d in lead:
            n *= d
        return n * (rows + cols) * dtype_bytes(state_dtype)
    return g.numel * dtype_bytes(state_dtype)


@dataclass(frozen=True)
class Optimizer:
    name: str
    description: str
    state_bytes: Callable[[TensorGroup, str], int]
    paged: bool = False  # states live in CUDA unified memory and can be evicted to CPU under pressure


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("adamw", "AdamW: two states per parameter", _adam),
        Optimizer("adamw-8bit", "bitsandbytes AdamW8bit: two 8-bit blockwise states", _adam_8bit),
        Optimizer("paged-adamw-8bit", "bitsandbytes PagedAdamW8bit: as adamw-8bit, in paged memory", _adam_8bit, True),
        Optimizer("sgd", "SGD without momentum: no state", _sgd),
        Optimizer("sgd-momentum", "SGD with momentum: one state", _one_state),
        Optimizer("adafactor", "Adafactor: factored second moment, no momentum", _adafactor),
        Optimizer("lion", "Lion: one momentum state", _one_state),
    )
}


def get_optimizer(name: str) -> Optimizer:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise PeftcalcError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
