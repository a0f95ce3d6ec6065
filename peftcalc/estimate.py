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

from dataclasses import dataclass, field, replace
from functools import lru_cache

from peftcalc.activations import Activations, activation_bytes
from peftcalc.memory import ModelStates, model_states
from peftcalc.methods import DEFAULT_TABLE, Method, MethodOptions, ParamCount, make_method
from peftcalc.methods.base import Adaptation
from peftcalc.methods.full import Full
from peftcalc.model.spec import ModelSpec
from peftcalc.optim import get_optimizer
from peftcalc.overhead import OverheadLine, OverheadSpec, overhead_lines, rounding_bytes, segment_bytes
from peftcalc.parallel import (Placement, check_model_parallel, fp32_shard_states, model_parallel_activations, place,
                               stage_layers, stage_spec)
from peftcalc.errors import PeftcalcError
from peftcalc.kbit import kbit_preparation_applies, prepared_setup, quantized_base_notes
from peftcalc.setup import Setup
from peftcalc.checkpoint import CheckpointSize, checkpoint_size
from peftcalc.sharding import Sharded, deepspeed, fsdp1, phase_peaks, units_for

# The default overhead lines (context + workspace; rounding and fragmentation are computed per estimate),
# kept as a number for callers that pass an explicit total. `None` as overhead_bytes means: the default lines.
DEFAULT_OVERHEAD_BYTES = None
INPUT_TENSORS = 2  # input_ids and labels, int64 (B, S) each


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU. The peak is the largest of the forward, backward and optimizer phases (tensor bytes);
    the three quantities users compare with add the overhead lines level by level (peftcalc/overhead.py):
    `allocated_bytes` (torch.cuda.max_memory_allocated), `reserved_bytes` (max_memory_reserved) and `total`
    (the device total, CUDA context included: what must fit in the GPU)."""

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
    communication_bytes: int = 0  # gradient buckets kept between steps: DDP's (a flat copy of every gradient),
    # DeepSpeed ZeRO-3's ipg bucket
    resident_gradient_bytes: int = 0  # gradients allocated for the whole run (DeepSpeed ZeRO-3's fp32 partitions:
    # the same bytes as gradient_bytes, live from the step's start)
    in_flight_activation_bytes: int = 0  # pipeline parallel: saved activations of the other micro-batches in flight
    accumulated_gradient_bytes: int = 0  # gradients held between micro-batches of gradient accumulation
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
            + self.input_bytes + self.communication_bytes + self.resident_gradient_bytes

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

    def _lines(self, *levels: str) -> int:
        return sum(l.bytes for l in self.overhead if l.level in levels)

    @property
    def allocated_bytes(self) -> int:
        """The allocated peak: tensors, the cuBLAS workspace and the allocator's 512-byte rounding."""
        return self.peak_bytes + self._lines("allocated")

    @property
    def reserved_bytes(self) -> int:
        """Reserved by the caching allocator at its peak: allocated plus segment tails and fragmentation."""
        return self.allocated_bytes + self._lines("reserved")

    @property
    def total(self) -> int:
        """The device total: reserved plus the CUDA context (every overhead line)."""
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
    # methods of the default table this model cannot take (method, why): asked by name, they are errors
    not_estimated: tuple[tuple[str, str], ...] = ()

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
                    overhead: OverheadSpec = OverheadSpec(), device: str = "cuda") -> MethodEstimate:
    """One method's estimate on `device` ("cuda": the GPU's kernels, what users run; "cpu": what the traced
    backend runs). `overhead_bytes` (an int) replaces the overhead lines by one given total; `overhead`
    overrides single lines."""
    precision = setup.recipe
    get_optimizer(setup.optimizer)
    whole = adapt(spec, method)
    kbit = kbit_preparation_applies(whole, setup)
    setup = prepared_setup(whole, setup)  # what prepare_model_for_kbit_training turns on
    in_flight = 0
    if setup.tensor_parallel > 1 or setup.pipeline_parallel > 1:  # one GPU holds one stage's tensor shard
        check_model_parallel(spec, setup.tensor_parallel, setup.pipeline_parallel)
        adaptation = adapt(stage_spec(spec, setup.tensor_parallel, stage_layers(spec, setup.pipeline_parallel)),
                           method)
        acts, in_flight = model_parallel_activations(spec, method, setup, device)
    else:
        adaptation = whole
        acts = activation_bytes(adaptation, setup, device=device, method=method)
    states = model_states(adaptation, precision, setup.optimizer, kbit, setup.optimizer_state_dtype)
    if setup.fp32_shards:
        states = fp32_shard_states(adaptation, states, setup, kbit)
    placed: Placement = place(states, setup.num_gpus, setup.zero_stage, setup.offload, setup.offload_params)
    if _deepspeed3(setup):
        placed = deepspeed.placement(adaptation, setup, placed)
    elif setup.num_gpus > 1 and setup.zero_stage == 3 and setup.sharding_impl == "fsdp1":
        placed = fsdp1.placement(adaptation, setup, states, placed)
    later = (activation_bytes(adaptation, setup, accumulating=True, device=device, method=method)
             if setup.gradient_accumulation > 1 else None)
    memory = compose(adaptation, states, placed, acts, setup, overhead_bytes, overhead, later, device)
    if in_flight:
        memory = replace(memory, in_flight_activation_bytes=in_flight)
    full = adapt(spec, Full())
    return MethodEstimate(method.name, whole.params, memory, acts,
                          checkpoint_size(whole, full, precision, num_tasks),
                          whole.notes + quantized_base_notes(whole, setup))


def compose(adaptation: Adaptation, states: ModelStates, placed: Placement, acts: Activations, setup: Setup,
            overhead_bytes: int | None = None, overhead: OverheadSpec = OverheadSpec(),
            later: Activations | None = None, device: str = "cuda") -> MemoryBreakdown:
    """The phases of one step on one GPU from model states, their placement and the replayed activations.
    `later`: the replay of a later micro-batch of gradient accumulation (see `accumulation_peaks`); `device`: as
    estimate_method's ("cpu": the measured runs' gloo collectives)."""
    ranks = setup.num_gpus if setup.zero_stage >= 1 else 1
    parallel = setup.num_gpus > 1
    # DDP (torch DistributedDataParallel, gradient_as_bucket_view=False): its reducer keeps a flat bucket copy of
    # every gradient from the first backward on (measured: exactly +gradients at every phase, bench/results).
    comm = placed.gradient_bytes if parallel and setup.zero_stage == 0 else 0
    # DeepSpeed ZeRO-3 allocates its ipg bucket and its fp32 gradient partitions once for the run
    resident = placed.gradient_bytes if _deepspeed3(setup) else 0
    comm += deepspeed.bucket_bytes(adaptation, setup) if _deepspeed3(setup) else 0
    start = placed.weight_bytes + states.buffer_bytes + placed.master_weight_bytes + placed.optimizer_state_bytes \
        + input_bytes(setup) + comm + resident
    # Backward's gradients: the replay materialises every gradient in full; under ZeRO-2/3 each rank keeps its
    # shard once reduced.
    kept = placed.gradient_bytes if later is not None else 0
    sharded = _sharded(adaptation, acts, setup, device)
    if sharded is not None:  # ZeRO-3: what each moment of the replay holds beside it (peftcalc/sharding/)
        kept = 0 if resident else kept  # DeepSpeed accumulates into its resident partitions
        forward, backward = (p + kept for p in phase_peaks(acts, sharded, start, placed.gradient_bytes - resident))
    else:
        forward, backward = _unsharded_peaks(adaptation, states, placed, acts, setup, start)
        if later is not None:
            gathered = fsdp_gathered_bytes(adaptation, setup)[0]
            forward, backward = accumulation_peaks(forward, backward, start + kept, later, gathered)
    temps = optimizer_temporary_bytes(states, setup, ranks)
    if resident or setup.offload_params:  # stepped from the resident partitions / on the CPU
        opt_grads = cast = 0
    elif setup.offload:
        opt_grads = placed.gradient_bytes
        cast = 0
    else:
        opt_grads = -(-states.master_gradient_bytes // (setup.num_gpus if setup.zero_stage >= 2 else 1))
        cast = states.last_cast_gradient_bytes
    optimizer = start + opt_grads + max(temps, cast)
    lines = _overhead(adaptation, setup, max(forward, backward, optimizer), start, overhead_bytes, overhead)
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
        resident_gradient_bytes=resident,
        accumulated_gradient_bytes=kept,
        forward_peak_bytes=forward,
        backward_peak_bytes=backward,
        optimizer_peak_bytes=optimizer,
        overhead=lines,
    )


def _deepspeed3(setup: Setup) -> bool:
    return setup.num_gpus > 1 and setup.zero_stage == 3 and setup.sharding_impl == "deepspeed"


def _sharded(adaptation: Adaptation, acts: Activations, setup: Setup, device: str) -> Sharded | None:
    """The FSDP units of a fully sharded run whose replay tagged its moments; None otherwise."""
    if setup.num_gpus == 1 or setup.zero_stage < 3 or not acts.moments:
        return None
    return units_for(adaptation, setup, acts.stack_counts, device)


def _unsharded_peaks(adaptation: Adaptation, states: ModelStates, placed: Placement, acts: Activations,
                     setup: Setup, start: int) -> tuple[int, int]:
    """Forward and backward peaks from the replay's overall peaks: one GPU, DDP, ZeRO-1/2, and ZeRO-3 where the
    activations carry no tagged moments (a traced profile): then the gathered weights of `fsdp_gathered_bytes`
    at both peaks, an approximation."""
    gathered, block_shortfall = fsdp_gathered_bytes(adaptation, setup)
    # ZeRO-2 keeps each reduced shard; under ZeRO-3/FSDP2 each block's gradients are reduce-scattered right after its
    # backward while the root's stay whole until the end (reduced last)
    shortfall = states.gradient_bytes - placed.gradient_bytes if setup.zero_stage == 2 else block_shortfall
    return (start + acts.forward_peak_bytes + gathered,
            start + acts.backward_peak_bytes - shortfall + gathered)


def fsdp_gathered_bytes(adaptation: Adaptation, setup: Setup) -> tuple[int, int]:
    """ZeRO-3 / FSDP2 (`fully_shard(reshard_after_forward=True)` per block, then the root): the unsharded weights a
    rank holds beside its shards at the forward and backward peaks (both in the loss and its backward): the root's
    (embeddings, final norm, head) and one block's. Checked on 2- and 4-rank gloo runs (the meter counts FSDP2's
    storage resizes; bench/results/cpu-accuracy.jsonl). FSDP2 pads each weight's first dimension to a multiple of
    the ranks (collectives.fsdp_units); the unpadded sizes are used here, a few bytes less, so that bytes per GPU
    never grow with more GPUs (the planner's searches rely on it). Second: the blocks' gradient bytes a rank does
    not keep once they are reduce-scattered (the root's are reduced last, at the end of backward). When the
    replay's backward peak comes early (in the loss's backward, before most gradients exist), subtracting them
    under-estimates that phase; the forward phase, exact, then bounds the error (measured: within 2.1 %)."""
    if setup.num_gpus == 1 or setup.zero_stage < 3:
        return 0, 0
    from peftcalc.collectives import fsdp_units  # ZeRO-3 only: not on the everyday estimate's import path

    units = fsdp_units(adaptation, setup.recipe, 1)
    block_grads = sum(u.gradient_bytes * u.count for u in units[1:])
    kept = 0 if setup.offload_params and setup.offload else -(-block_grads // setup.num_gpus)  # shards offloaded
    return units[0].weight_bytes + max((u.weight_bytes for u in units[1:]), default=0), block_grads - kept


def _overhead(adaptation: Adaptation, setup: Setup, peak: int, start: int, overhead_bytes: int | None,
              overhead: OverheadSpec) -> tuple[OverheadLine, ...]:
    """The overhead lines: one given total, or the stated lines (overhead.py) at this tensor peak (`start`: what
    lives at the start of the step)."""
    if overhead_bytes is not None:
        return (OverheadLine("user", int(overhead_bytes), "given"),)
    precision, per_tensor = setup.recipe, 2 if setup.optimizer == "adamw" else 0
    return overhead_lines(overhead, peak, start - input_bytes(setup),
                          rounding_bytes(adaptation, precision, True, per_tensor),
                          segment_bytes(adaptation, precision, per_tensor))


def accumulation_peaks(forward: int, backward: int, start: int, later: Activations, gathered: int
                       ) -> tuple[int, int]:
    """Gradient accumulation: micro-batches 2..k start with the gradients of the ones before still held (each
    rank's share under ZeRO-2/3, whole under DDP), and torch adds each new gradient into them in place
    (AccumulateGrad: `grad += new_grad`, the new one freed). `start` includes those gradients; `later` is the
    replay of such a micro-batch (its peaks leave the held gradients out). The step's forward and backward peaks
    are the larger of the first micro-batch's and a later one's."""
    return (max(forward, start + later.forward_peak_bytes + gathered),
            max(backward, start + later.backward_peak_bytes + gathered))


def estimate(spec: ModelSpec, setup: Setup, methods: tuple[str, ...] = DEFAULT_TABLE,
             options: MethodOptions = MethodOptions(), num_tasks: int = 10,
             overhead_bytes: int | None = DEFAULT_OVERHEAD_BYTES, overhead: OverheadSpec = OverheadSpec()) -> Estimate:
    """Estimate every method in `methods` for one model and setup. Methods asked for by name fail with their error;
    of the default table, those the model cannot take (no place for an adapter, a step peft or transformers cannot
    run) are left out and listed, unless none is left."""
    results, skipped = [], []
    for m in methods:
        try:
            results.append(estimate_method(spec, make_method(m, options), setup, num_tasks, overhead_bytes, overhead))
        except PeftcalcError as e:
            if methods != DEFAULT_TABLE:
                raise
            skipped.append((m, str(e)))
    if not results:
        raise PeftcalcError(skipped[0][1])
    return Estimate(spec, setup, options, tuple(results), tuple(skipped))
