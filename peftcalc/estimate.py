"""The analytic estimate: ModelSpec x methods x Setup -> typed results. Pure; no torch.

Composes the parts: methods (what trains), memory (model states, exact), activations (estimate),
parallel (bytes per GPU), storage (checkpoint bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.activations import Activations, activation_bytes
from peftcalc.memory import ModelStates, model_states
from peftcalc.methods import DEFAULT_TABLE, Method, MethodOptions, ParamCount, make_method
from peftcalc.methods.base import Adaptation
from peftcalc.methods.full import Full
from peftcalc.model.spec import ModelSpec
from peftcalc.optim import get_optimizer
from peftcalc.parallel import Placement, place
from peftcalc.precision import Precision, get_precision
from peftcalc.setup import Setup
from peftcalc.storage import Storage, storage

# Memory outside PyTorch's tensors on a GPU: the CUDA context, cuBLAS/cuDNN workspaces. An assumed
# default, not a measurement; the measured backend reports the real figure on a GPU.
DEFAULT_OVERHEAD_BYTES = 512 * 2**20


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU. `total` is the peak: model states, plus whichever is larger of the
    activations (forward/backward) and the optimizer step's temporaries, plus overhead."""

    weight_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    master_weight_bytes: int
    activation_bytes: int
    temporary_bytes: int  # the optimizer step's scratch (foreach AdamW: one copy of the trainable weights)
    overhead_bytes: int
    cpu_bytes: int = 0  # offloaded states, in host memory

    @property
    def model_state_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_state_bytes + self.master_weight_bytes

    @property
    def total(self) -> int:
        return self.model_state_bytes + max(self.activation_bytes, self.temporary_bytes) + self.overhead_bytes


@dataclass(frozen=True)
class MethodEstimate:
    method: str
    params: ParamCount
    memory: MemoryBreakdown
    activations: Activations
    storage: Storage
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Estimate:
    spec: ModelSpec
    setup: Setup
    options: MethodOptions
    results: tuple[MethodEstimate, ...]

    def result(self, method: str) -> MethodEstimate:
        return next(r for r in self.results if r.method == method)


def optimizer_temporary_bytes(states: ModelStates, setup: Setup) -> int:
    """Scratch memory of the optimizer step, by AdamW implementation (measured with torch 2.13, see
    DESIGN.md): foreach keeps one copy of the trainable weights, the for-loop one tensor at a time, fused none.
    Only torch's AdamW is modelled; bitsandbytes' 8-bit optimizers update in fused kernels (none)."""
    if setup.optimizer != "adamw":
        return 0
    if setup.adamw_impl == "foreach":
        return states.trainable_weight_bytes
    if setup.adamw_impl == "forloop":
        return states.largest_trainable_bytes
    return 0


@lru_cache(maxsize=4096)
def adapt(spec: ModelSpec, method: Method) -> Adaptation:
    return method.adapt(spec)


def estimate_method(spec: ModelSpec, method: Method, setup: Setup, num_tasks: int = 10,
                    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES) -> MethodEstimate:
    precision = get_precision(setup.precision)
    get_optimizer(setup.optimizer)
    adaptation = adapt(spec, method)
    states = model_states(adaptation, precision, setup.optimizer)
    placed: Placement = place(states, setup.num_gpus, setup.zero_stage, setup.offload)
    acts = activation_bytes(adaptation, setup, precision.compute_dtype)
    memory = MemoryBreakdown(
        weight_bytes=placed.weight_bytes,
        gradient_bytes=placed.gradient_bytes,
        optimizer_state_bytes=placed.optimizer_state_bytes,
        master_weight_bytes=placed.master_weight_bytes,
        activation_bytes=acts.total,
        temporary_bytes=0 if setup.offload else optimizer_temporary_bytes(states, setup),
        overhead_bytes=overhead_bytes,
        cpu_bytes=placed.cpu_bytes,
    )
    full = adapt(spec, Full())
    return MethodEstimate(method.name, adaptation.params, memory, acts,
                          storage(adaptation, full, precision, num_tasks), adaptation.notes)


def estimate(spec: ModelSpec, setup: Setup, methods: tuple[str, ...] = DEFAULT_TABLE,
             options: MethodOptions = MethodOptions(), num_tasks: int = 10,
             overhead_bytes: int = DEFAULT_OVERHEAD_BYTES) -> Estimate:
    """Estimate every method in `methods` for one model and setup."""
    results = tuple(estimate_method(spec, make_method(m, options), setup, num_tasks, overhead_bytes) for m in methods)
    return Estimate(spec, setup, options, results)
