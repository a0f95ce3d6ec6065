"""Optimizer state bytes per trainable tensor, per optimizer.

States are kept in `state_dtype` (see precision.py), except where an optimizer quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import TensorGroup
from peftcalc.units import dtype_bytes

# bitsandbytes 8-bit optimizers (Dettmers et al. 2021, arXiv:2110.02861; bitsandbytes optim/optimizer.py
# Optimizer2State.init_state, read at 0.50.2): per tensor two uint8 states of its shape (state1, state2) and two
# fp32 absmax per block of 256 (absmax1, absmax2); a tensor smaller than min_8bit_size=4096 keeps two fp32 states
# instead; the step count is a Python int. The optimizer holds the two 256-entry fp32 code tables (`fill_qmap`:
# dynamic, udynamic) once, shared by every 8-bit tensor. Checked to the byte against a real step
# (tests/measure/test_bitsandbytes.py).
BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096
BNB_QMAP_BYTES = 2 * 256 * 4
# Paged optimizers keep a state in CUDA unified memory (cudaMallocManaged, outside torch's caching allocator, so
# not in torch.cuda.max_memory_allocated) when its tensor has at least 1e5 elements (get_state_buffer); on the
# CPU they fall back to ordinary tensors (warning "Paged optimizers are not supported on CPU").
BNB_PAGED_MIN_NUMEL = 100_000


def _adam(g: TensorGroup, state_dtype: str) -> int:
    return 2 * g.numel * dtype_bytes(state_dtype)  # exp_avg, exp_avg_sq (Loshchilov & Hutter 2019)


def _adam_8bit(g: TensorGroup, state_dtype: str) -> int:
    if g.numel < BNB_MIN_8BIT_SIZE:
        return 2 * g.numel * 4
    return 2 * (g.numel + 4 * -(-g.numel // BNB_BLOCK))


def _adam_32bit(g: TensorGroup, state_dtype: str) -> int:
    return 2 * g.numel * 4  # bitsandbytes' 32-bit states are fp32 whatever the parameter's dtype


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
    bitsandbytes: bool = False  # a bitsandbytes optimizer (its step is one fused kernel per tensor on CUDA)

    def shared_state_bytes(self, numels: list[int]) -> int:
        """Bytes the optimizer keeps once, beside its per-tensor states (bitsandbytes' 8-bit code tables)."""
        eight_bit = self.state_bytes is _adam_8bit and any(n >= BNB_MIN_8BIT_SIZE for n in numels)
        return BNB_QMAP_BYTES if eight_bit else 0


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("adamw", "AdamW: two states per parameter", _adam),
        Optimizer("adamw-8bit", "bitsandbytes AdamW8bit: two 8-bit blockwise states", _adam_8bit, bitsandbytes=True),
        Optimizer("paged-adamw-8bit", "bitsandbytes PagedAdamW8bit: as adamw-8bit, in paged memory", _adam_8bit, True,
                  True),
        Optimizer("paged-adamw-32bit", "bitsandbytes PagedAdamW: two fp32 states, in paged memory", _adam_32bit,
                  True, True),
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
