"""The analytic estimate: ModelSpec x methods x Setup -> typed results. Pure; no torch.

Composes the parts: methods (what trains), memory (model states, exact), activations (the replayed step:
saved tensors and transient peaks), parallel (bytes per GPU), overhead (CUDA realities, one line each),
checkpoint (checkpoint bytes per task).

The peak is a phase, not a sum. One training step goes through

- forward: start + what forward keeps and makes (the largest moment is usually the loss);
- backward: start + saved activations being freed while gradients appear;
- optimizer: start + gradients (fp32 copies for master weights) + the AdamW implementation's scratch
  (for-loop: two tensors of one parameter's size while the previous one's `denom` lives; foreach: one copy
  of everything stepped, `torch._foreach_sqrt(exp_avg_sqs)`; fused: none),

where start = weights + buffers + master weights + optimizer states + the input batch. The peak is the
largest of the three; `total` adds the overhead lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from peftcalc.activations import Activations, activation_bytes
from peftcalc.memory import ModelStates, model_states
from peftcalc.methods import DEFAULT_TABLE, Method, MethodOptions, ParamCount, make_method
from peftcalc.methods.base import Adaptation
from peftcalc.methods.full import Full
from peftcalc.model.spec import ModelSpec
from peftcalc.optim import get_optimizer
from peftcalc.overhead import OverheadLine, OverheadSpec, overhead_lines, rounding_bytes
from peftcalc.parallel import Placement, place
from peftcalc.precision import get_precision
from peftcalc.setup import Setup
from peftcalc.checkpoint import CheckpointSize, checkpoint_size

# The default overhead lines (context + workspace; rounding and fragmentation are computed per estimate),
# kept as a number for callers that pass an explicit total. `None` as overhead_bytes means: the default lines.
DEFAULT_OVERHEAD_BYTES = None
INPUT_TENSORS = 2  # input_ids and labels, int64 (B, S) each


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU. The peak is the largest of the forward, backward and optimizer phases; `total` is the
    peak plus the overhead lines."""

    weight_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    master_weight_bytes: int
    activation_bytes: int  # live when forward returns, above the start: saved for backward, and the loss
    temporary_bytes: int  # the optimizer step's scratch at its largest
    overhead_bytes: int  # the sum of `overhead`
    cpu_bytes: int = 0  # offloaded states, in host memory
    buffer_bytes: int = 0  # non-parameter tensors of the model
    input_bytes: int = 0  # the batch: token ids and labels
    communication_bytes: int = 0  # DDP's gradient buckets (a flat copy of every gradient, kept between steps)
    forward_peak_bytes: int = 0  # the most live during forward (absolute)
    backward_peak_bytes: int = 0  # the most live during backward (absolute)
    optimizer_peak_bytes: int = 0  # the most live during the optimizer step (absolute)
    overhead: tuple[OverheadLine, ...] = field(default=())

    @property
    def model_state_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_state_bytes + self.master_weight_bytes

    @property
    def start_bytes(self) -> int:
        """Live at the start of a step: weights, buffers, master weights, optimizer states and the batch."""
        return self.weight_bytes + self.buffer_bytes + self.master_weight_bytes + self.optimizer_state_bytes \
            + self.input_bytes + self.communication_bytes

    @property
    def after_forward_bytes(self) -> int:
        return self.start_bytes + self.activation_bytes

    @property
    def phases(self) -> dict[str, int]:
        return {"forward": self.forward_peak_bytes, "backward": self.backward_peak_bytes,
                "optimizer": self.optimizer_peak_bytes}

    @property
    def peak_bytes(self) -> int:
        """The most tensor bytes live at any moment of the step (what the traced backend measures)."""
        return max(self.forward_peak_bytes, self.backward_peak_bytes, self.optimizer_peak_bytes)

    @property
    def peak_phase(self) -> str:
        p = self.phases
        return max(p, key=lambda k: p[k])

    @property
    def total(self) -> int:
        return self.peak_bytes + self.overhead_bytes


@dataclass(frozen=True)
class MethodEstimate:
    method: str
    params: ParamCount
    memory: MemoryBreakdown
    activations: Activations
    checkpoint: CheckpointSize
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Estimate:
    spec: ModelSpec
    setup: Setup
    options: MethodOptions
    results: tuple[MethodEstimate, ...]

    def result(self, method: str) -> MethodEstimate:
        return next(r for r in self.results if r.method == method)


def optimizer_temporary_bytes(states: ModelStates, setup: Setup, ranks: int = 1) -> int:
    """Scratch of the optimizer step, by torch AdamW implementation (torch/optim/adamw.py, measured with
    torch 2.13 in bench/results): foreach `_foreach_sqrt(exp_avg_sqs)` copies everything stepped, in the
    state dtype; the for-loop's `denom = (exp_avg_sq.sqrt() / ...)` two tensors of one parameter while the
    previous parameter's denom lives; fused none. Other optimizers (bitsandbytes' fused 8-bit kernels,
    Adafactor, Lion, SGD) are not modelled: none. Sharded states shard the foreach copy."""
    if setup.optimizer != "adamw" or setup.offload:
        return 0
    if setup.adamw_impl == "foreach":
        return -(-states.stepped_bytes // ranks)
    if setup.adamw_impl == "forloop":
        return states.forloop_temporary_bytes
    return 0


@lru_cache(maxsize=4096)
def adapt(spec: ModelSpec, method: Method) -> Adaptation:
    return method.adapt(spec)


def input_bytes(setup: Setup) -> int:
    return INPUT_TENSORS * setup.batch_size * setup.seq_len * 8


def estimate_method(spec: ModelSpec, method: Method, setup: Setup, num_tasks: int = 10,
                    overhead_bytes: int | None = DEFAULT_OVERHEAD_BYTES,
                    overhead: OverheadSpec = OverheadSpec()) -> MethodEstimate:
    """One method's estimate. `overhead_bytes` (an int) replaces the overhead lines by one given total;
    `overhead` overrides single lines."""
    precision = get_precision(setup.precision)
    get_optimizer(setup.optimizer)
    adaptation = adapt(spec, method)
    states = model_states(adaptation, precision, setup.optimizer)
    placed: Placement = place(states, setup.num_gpus, setup.zero_stage, setup.offload)
    acts = activation_bytes(adaptation, setup, method)
    memory = compose(adaptation, states, placed, acts, setup, overhead_bytes, overhead)
    full = adapt(spec, Full())
    return MethodEstimate(method.name, adaptation.params, memory, acts,
                          checkpoint_size(adaptation, full, precision, num_tasks), adaptation.notes)


def compose(adaptation: Adaptation, states: ModelStates, placed: Placement, acts: Activations, setup: Setup,
            overhead_bytes: int | None = None, overhead: OverheadSpec = OverheadSpec()) -> MemoryBreakdown:
    """The phases of one step on one GPU from model states, their placement and the replayed activations."""
    ranks = setup.num_gpus if setup.zero_stage >= 1 else 1
    parallel = setup.num_gpus > 1
    # DDP (torch DistributedDataParallel, gradient_as_bucket_view=False): its reducer keeps a flat bucket copy of
    # every gradient from the first backward on (measured: exactly +gradients at every phase, bench/results).
    comm = placed.gradient_bytes if parallel and setup.zero_stage == 0 else 0
    start = placed.weight_bytes + states.buffer_bytes + placed.master_weight_bytes + placed.optimizer_state_bytes \
        + input_bytes(setup) + comm
    # Backward's gradients: the replay materialises every gradient in full; under ZeRO-2/3 each rank keeps its
    # shard once reduced.
    grad_shortfall = states.gradient_bytes - placed.gradient_bytes
    # ZeRO-3 / FSDP2 (fully_shard per block, then the root): during forward and backward a rank holds the
    # gathered weights of the root (embeddings, head) and of two blocks (the current one and the one prefetched),
    # and in backward one block's unsharded gradients before their reduce-scatter. A stated approximation: the
    # CPU meter cannot see FSDP2's storage resizes, so these are not checked against measurement yet.
    gathered = 0
    if parallel and setup.zero_stage >= 3:
        gathered = (states.root_weight_bytes + 2 * states.layer_weight_bytes) * (setup.num_gpus - 1) // setup.num_gpus
    forward = start + acts.forward_peak_bytes + gathered
    backward = start + acts.backward_peak_bytes - (grad_shortfall if setup.zero_stage >= 2 else 0) \
        + (gathered + states.layer_weight_bytes if gathered else 0)
    temps = optimizer_temporary_bytes(states, setup, ranks)
    if setup.offload:
        opt_grads = placed.gradient_bytes
        cast = 0
    else:
        opt_grads = -(-states.master_gradient_bytes // (setup.num_gpus if setup.zero_stage >= 2 else 1))
        cast = states.last_cast_gradient_bytes
    optimizer = start + opt_grads + max(temps, cast)
    peak = max(forward, backward, optimizer)
    if overhead_bytes is not None:
        lines: tuple[OverheadLine, ...] = (OverheadLine("user", int(overhead_bytes), "given"),)
    else:
        rounding = rounding_bytes(adaptation, get_precision(setup.precision), True,
                                  2 if setup.optimizer == "adamw" else 0)
        lines = overhead_lines(overhead, peak, rounding)
    return MemoryBreakdown(
        weight_bytes=placed.weight_bytes,
        gradient_bytes=placed.gradient_bytes,
        optimizer_state_bytes=placed.optimizer_state_bytes,
        master_weight_bytes=placed.master_weight_bytes,
        activation_bytes=acts.after_forward_bytes,
        temporary_bytes=temps,
        overhead_bytes=sum(l.bytes for l in lines),
        cpu_bytes=placed.cpu_bytes,
        buffer_bytes=states.buffer_bytes,
        input_bytes=input_bytes(setup),
        communication_bytes=comm,
        forward_peak_bytes=forward,
        backward_peak_bytes=backward,
        optimizer_peak_bytes=optimizer,
        overhead=lines,
    )


def estimate(spec: ModelSpec, setup: Setup, methods: tuple[str, ...] = DEFAULT_TABLE,
             options: MethodOptions = MethodOptions(), num_tasks: int = 10,
             overhead_bytes: int | None = DEFAULT_OVERHEAD_BYTES, overhead: OverheadSpec = OverheadSpec()) -> Estimate:
    """Estimate every method in `methods` for one model and setup."""
    results = tuple(estimate_method(spec, make_method(m, options), setup, num_tasks, overhead_bytes, overhead)
                    for m in methods)
    return Estimate(spec, setup, options, results)
