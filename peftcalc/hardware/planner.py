"""The hardware planner: which GPUs, how many, for how long, for how much, buy or rent.

For each method x GPU it answers, from the analytic model alone (estimate.py; no torch):

* a fit verdict at the setup asked: fits / fits only with (smaller batch, gradient checkpointing, 8-bit
  optimizer, optimizer offload) / does not fit, with the margin in bytes and the largest part of the peak;
* the largest micro-batch and the longest sequence that fit, by search over the model;
* the fewest GPUs for DDP, ZeRO 1/2/3 (FSDP full shard = ZeRO-3) and ZeRO 2/3 with CPU offload, up to
  --max-gpus, in whole nodes once past one node (hardware/nodes.py), with bytes per GPU and host memory per node
  (an offload that needs more host memory than the node has does not run);
* the time of one optimizer step by part (compute at an assumed MFU, exposed communication, exposed offload:
  hardware/steptime.py) and of --tokens x --epochs; rent and purchase of whole nodes, break-even runs;
* a ranked shortlist: cheapest, fastest, fewest GPUs, by that time (not by perfect scaling).

Searches rest on monotonicity, which the analytic model has and tests check: per-GPU bytes never decrease
with batch or sequence length, and never increase with the number of GPUs (from 2 on) for a given ZeRO stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from itertools import combinations
from typing import Callable, Iterable, Sequence

from peftcalc.compute import Flops, break_even_runs, check_mfu, check_run, purchase_usd, rent_usd, run_flops, \
    training_flops_per_seq, SECONDS_PER_HOUR
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import DEFAULT_OVERHEAD_BYTES, MemoryBreakdown, adapt, estimate_method
from peftcalc.hardware.catalogue import Gpu
from peftcalc.hardware.mfu import IMPLIED, Mfu, given_mfu
from peftcalc.hardware.model_parallel import candidates
from peftcalc.hardware.nodes import Node, node_for
from peftcalc.hardware.steptime import StepTime, step_time
from peftcalc.methods import DEFAULT_TABLE, Adaptation, Method, MethodOptions, make_method
from peftcalc.model.spec import ModelSpec
from peftcalc.precision import get_precision
from peftcalc.setup import Setup

# Search bounds: a result equal to a bound means "at least this much" (stated in the output).
MAX_BATCH_SIZE = 2**16
MAX_SEQ_LEN = 2**20
# Buying GPUs without a sourced server price: the host (CPUs, memory, chassis, NICs) as a share of the GPUs' price.
# An ASSUMPTION (no source), stated in the output; Apple prices are whole machines already.
ASSUMED_HOST_SHARE = 0.25


# ---- evaluating one setup ------------------------------------------------------------------------------

class Evaluator:
    """Per-GPU memory of (method, setup) for one model, memoised.

    Model states (weights, gradients, master weights, optimizer states, their placement, the optimizer's
    temporaries) do not depend on batch or sequence length, so they come from `estimate_method` once per
    parallel configuration; for each (batch, sequence) only `activation_bytes` runs, and the peak is
    MemoryBreakdown.total of estimate.py itself. A test checks that this equals `estimate_method` exactly.
    """

    def __init__(self, spec: ModelSpec, options: MethodOptions = MethodOptions(),
                 overhead_bytes: int = DEFAULT_OVERHEAD_BYTES) -> None:
        self.spec = spec
        self.options = options
        self.overhead_bytes = overhead_bytes
        self._methods: dict[str, Method] = {}
        self._adaptations: dict[str, Adaptation] = {}
        self._states: dict[tuple, MemoryBreakdown] = {}
        self._memo: dict[tuple[str, Setup], MemoryBreakdown] = {}
        self._totals: dict[tuple, int] = {}
        self.calls = 0  # distinct setups evaluated (for the benchmark)

    def method(self, name: str) -> Method:
        if name not in self._methods:
            self._methods[name] = make_method(name, self.options)
        return self._methods[name]

    def adaptation(self, name: str) -> Adaptation:
        if name not in self._adaptations:
            self._adaptations[name] = adapt(self.spec, self.method(name))
        return self._adaptations[name]

    def memory(self, method: str, setup: Setup) -> MemoryBreakdown:
        key = (method, setup)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        self.calls += 1
        # The peak is a phase (estimate.py): model states and the replayed step's activations are both cached
        # there, so a new (batch, sequence) costs a few polynomial evaluations.
        mem = estimate_method(self.spec, self.method(method), setup, overhead_bytes=self.overhead_bytes).memory
        self._memo[key] = mem
        return mem

    def peak(self, method: str, setup: Setup, *, batch_size: int | None = None, seq_len: int | None = None,
             num_gpus: int | None = None, zero_stage: int | None = None, offload: bool | None = None) -> int:
        """The per-GPU peak of `setup` with the given fields changed. Keyed by a plain tuple, so the searches'
        repeated points cost a dict lookup rather than building a Setup."""
        b = setup.batch_size if batch_size is None else batch_size
        s = setup.seq_len if seq_len is None else seq_len
        n = setup.num_gpus if num_gpus is None else num_gpus
        z = setup.zero_stage if zero_stage is None else zero_stage
        o = setup.offload if offload is None else offload
        key = (method, setup, b, s, n, z, o)
        total = self._totals.get(key)
        if total is None:
            changed = replace(setup, batch_size=b, seq_len=s, num_gpus=n, zero_stage=z, offload=o)
            total = self._totals[key] = self.memory(method, changed).total
        return total


def largest_part(memory: MemoryBreakdown) -> tuple[str, int]:
    """The largest part of the peak, with its bytes: what to shrink first."""
    transient = ("activations", memory.activation_bytes) if memory.activation_bytes >= memory.temporary_bytes \
        else ("optimizer temporaries", memory.temporary_bytes)
    parts = [("weights", memory.weight_bytes), ("gradients", memory.gradient_bytes),
             ("optimizer states", memory.optimizer_state_bytes), ("master weights", memory.master_weight_bytes),
             transient, ("overhead", memory.overhead_bytes)]
    return max(parts, key=lambda p: p[1])


def limiting_component(memory: MemoryBreakdown) -> str:
    """The largest part of the peak: what to shrink first."""
    return largest_part(memory)[0]


# ---- searches ------------------------------------------------------------------------------------------

def largest_fitting(peak: Callable[[int], int], capacity: int, upper: int) -> int | None:
    """The largest x in [1, upper] with peak(x) <= capacity, for a non-decreasing `peak`; None if even 1 fails.

    Brackets [1, upper], then narrows [lo fits, hi does not] by interpolation on the peak (exact in one step
    when the peak is linear in x, as activations are in batch and, with sdpa, in sequence length), falling
    back to bisection whenever an interpolation step fails to halve the bracket: at most ~2 log2(upper)
    evaluations, typically 3-6."""
    lo, p_lo = 1, peak(1)
    if p_lo > capacity:
        return None
    p_hi = peak(upper)
    if p_hi <= capacity:
        return upper
    hi = upper
    bisect_next = False
    while hi - lo > 1:
        width = hi - lo
        if bisect_next or p_hi == p_lo:
            x = lo + width // 2
        else:
            x = lo + (capacity - p_lo) * width // (p_hi - p_lo)
            x = min(max(x, lo + 1), hi - 1)
        p = peak(x)
        if p <= capacity:
            lo, p_lo = x, p
        else:
            hi, p_hi = x, p
        # if interpolation did not halve the bracket, bisect next time (guarantees log2 worst case)
        bisect_next = not bisect_next and (hi - lo) * 2 > width
    return lo


def smallest_fitting(peak: Callable[[int], int], capacity: int, upper: int) -> int | None:
    """The smallest n in [1, upper] with peak(n) <= capacity, for a non-increasing `peak` (bisection)."""
    if peak(upper) > capacity:
        return None
    lo, hi = 0, upper  # peak(lo) > capacity (or lo = 0), peak(hi) fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= capacity:
            hi = mid
        else:
            lo = mid
    return hi


def max_batch_size(ev: Evaluator, method: str, setup: Setup, capacity_bytes: int,
                   upper: int = MAX_BATCH_SIZE) -> int | None:
    """The largest micro-batch per GPU that fits `capacity_bytes` at `setup`'s sequence length."""
    return largest_fitting(lambda b: ev.peak(method, setup, batch_size=b), capacity_bytes, upper)


def max_seq_len(ev: Evaluator, method: str, setup: Setup, capacity_bytes: int,
                upper: int = MAX_SEQ_LEN) -> int | None:
    """The longest sequence that fits `capacity_bytes` at `setup`'s micro-batch. A memory limit only: the
    model's trained context window (max_position_embeddings) is a separate limit, reported alongside."""
    return largest_fitting(lambda s: ev.peak(method, setup, seq_len=s), capacity_bytes, upper)


# ---- strategies ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Strategy:
    name: str
    zero_stage: int
    offload: bool
    description: str


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("ddp", 0, False, "data parallel: every GPU holds every model state"),
    Strategy("zero-1", 1, False, "ZeRO-1: optimizer states and master weights sharded"),
    Strategy("zero-2", 2, False, "ZeRO-2: + gradients sharded"),
    Strategy("zero-3", 3, False, "ZeRO-3 / FSDP full shard: + weights sharded"),
    Strategy("zero-2+offload", 2, True, "ZeRO-Offload: ZeRO-2 with optimizer states in CPU memory"),
    Strategy("zero-3+offload", 3, True, "ZeRO-3 / FSDP with optimizer states in CPU memory"),
)


def strategy_name(zero_stage: int, offload: bool, setup: Setup | None = None) -> str:
    name = ("ddp" if zero_stage == 0 else f"zero-{zero_stage}") + ("+offload" if offload else "")
    if setup is not None and (setup.tensor_parallel > 1 or setup.pipeline_parallel > 1):
        sp = "-sp" if setup.sequence_parallel else ""
        return f"tp{setup.tensor_parallel}{sp}-pp{setup.pipeline_parallel}+{name}"
    return name


def with_strategy(setup: Setup, num_gpus: int, zero_stage: int, offload: bool) -> Setup:
    return replace(setup, num_gpus=num_gpus, zero_stage=zero_stage, offload=offload)


def host_memory_fits(node: Node, memory: MemoryBreakdown, num_gpus: int) -> bool:
    """Whether the offloaded states of one node's GPUs fit its host memory (unknown host memory: assumed to)."""
    return node.host_memory_bytes is None or memory.cpu_bytes * min(num_gpus, node.gpus_per_node) <= \
        node.host_memory_bytes


def whole_nodes(num_gpus: int, node: Node) -> int:
    """GPUs in whole nodes once past one node; within one node, any count."""
    per = node.gpus_per_node
    return num_gpus if num_gpus <= per else -(-num_gpus // per) * per


def gpu_limit(node: Node, max_gpus: int) -> int:
    """The most GPUs a run may use: --max-gpus in whole nodes, or one node where no network joins them."""
    if not node.multi_node or max_gpus <= node.gpus_per_node:
        return min(max_gpus, node.gpus_per_node)
    return max_gpus // node.gpus_per_node * node.gpus_per_node


def fewest_gpus(ev: Evaluator, method: str, setup: Setup, strategy: Strategy, capacity_bytes: int,
                max_gpus: int, node: Node | None = None) -> int | None:
    """The fewest GPUs (<= max_gpus, whole nodes past one node of `node`) on which `strategy` fits `setup`, its
    offloaded states included in the node's host memory; None if none do. From 2 GPUs on, bytes per GPU never
    increase with more GPUs (shards only shrink), so bisection is exact; 1 GPU is tried on its own."""
    upper = max_gpus if node is None else gpu_limit(node, max_gpus)

    def fits(n: int) -> bool:
        changed = with_strategy(setup, n, strategy.zero_stage, strategy.offload)
        if ev.peak(method, changed) > capacity_bytes:
            return False
        return node is None or not strategy.offload or host_memory_fits(node, ev.memory(method, changed), n)

    if upper >= 1 and fits(1):  # one GPU shards and gathers nothing: not on the curve of 2+ (see fsdp_gathered_bytes)
        return 1
    if upper < 2 or not fits(upper):
        return None
    lo, hi = 1, upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi if node is None else min(whole_nodes(hi, node), upper)


# ---- remedies ------------------------------------------------------------------------------------------

REMEDIES = ("smaller batch", "gradient checkpointing", "adamw-8bit", "optimizer offload")  # in order of preference


def _applicable(setup: Setup) -> tuple[str, ...]:
    out = []
    if setup.batch_size > 1:
        out.append("smaller batch")
    if not setup.gradient_checkpointing:
        out.append("gradient checkpointing")
    if setup.optimizer == "adamw":
        out.append("adamw-8bit")
    if not setup.offload:
        out.append("optimizer offload")
    return tuple(out)


def _apply(setup: Setup, remedies: Iterable[str]) -> Setup:
    changes: dict = {}
    for r in remedies:
        if r == "gradient checkpointing":
            changes["gradient_checkpointing"] = True
        elif r == "adamw-8bit":
            changes["optimizer"] = "adamw-8bit"
        elif r == "optimizer offload":  # ZeRO-Offload is ZeRO-2 + offload (Ren et al. 2021); on one GPU the
            changes["offload"] = True     # stage shards nothing, so only the offload changes
            changes["zero_stage"] = max(setup.zero_stage, 2)
    return replace(setup, **changes) if changes else setup


def find_remedies(ev: Evaluator, method: str, setup: Setup, capacity_bytes: int
                  ) -> tuple[tuple[str, ...], Setup] | None:
    """The fewest changes (then the most preferred, in REMEDIES order) that make `setup` fit, with the setup
    they give; "smaller batch" becomes the largest batch that fits. None if nothing does."""
    applicable = _applicable(setup)
    subsets = sorted((c for k in range(1, len(applicable) + 1) for c in combinations(applicable, k)),
                     key=lambda c: (len(c), [REMEDIES.index(r) for r in c]))
    for subset in subsets:
        changed = _apply(setup, subset)
        if "smaller batch" in subset:
            b = max_batch_size(ev, method, changed, capacity_bytes, setup.batch_size - 1)
            if b is None:
                continue
            changed = replace(changed, batch_size=b)
        if ev.peak(method, changed) <= capacity_bytes:
            return subset, changed
    return None


# ---- options -------------------------------------------------------------------------------------------

class Verdict(str, Enum):
    FITS = "fits"
    FITS_WITH = "fits with"
    DOES_NOT_FIT = "does not fit"


@dataclass(frozen=True)
class Cost:
    flops: Flops
    run_flops: int
    mfu: Mfu | None  # given with --mfu, or the one the predicted time implies (None where it could not be timed)
    hours: float | None  # None where the GPU lacks the compute dtype or a link cannot be timed
    rent_usd: float | None  # None where nobody rents the GPU by the hour
    purchase_usd: int | None
    break_even_runs: float | None
    note: str | None
    step: StepTime | None = None  # one optimizer step by part
    purchase_estimated: bool = False  # GPUs x price + the assumed host share (no sourced node price)


@dataclass(frozen=True)
class Option:
    """One (GPU, number of GPUs, method, strategy) evaluated at the setup asked."""

    gpu: Gpu
    method: str
    num_gpus: int
    zero_stage: int
    offload: bool
    kind: str  # "as asked", "fewest GPUs" (for its strategy) or "max GPUs" (nothing fits as asked)
    setup: Setup  # the setup asked, on this many GPUs with this strategy
    memory: MemoryBreakdown  # per GPU at `setup`
    verdict: Verdict
    remedies: tuple[str, ...]  # the changes it needs (empty unless verdict is FITS_WITH)
    run_setup: Setup | None  # what runs: `setup` or `setup` with the remedies; None if nothing fits
    run_memory: MemoryBreakdown | None
    max_batch_size: int | None  # under run_setup (or setup) at its sequence length
    max_seq_len: int | None  # under run_setup (or setup) at its batch
    flops: Flops  # of run_setup (or setup)
    cost: Cost | None  # None unless it runs
    node: Node | None = None  # the server type the GPUs sit in

    @property
    def nodes(self) -> int:
        """Nodes the GPUs occupy (1 within a node)."""
        per = self.node.gpus_per_node if self.node else 8
        return -(-self.setup.gpus // per)

    @property
    def step_seconds(self) -> float | None:
        return self.cost.step.step_seconds if self.cost and self.cost.step else None

    @property
    def strategy(self) -> str:
        return strategy_name(self.zero_stage, self.offload, self.setup)

    @property
    def fits(self) -> bool:
        return self.verdict is Verdict.FITS

    @property
    def runs(self) -> bool:
        return self.run_setup is not None

    @property
    def capacity_bytes(self) -> int:
        return self.gpu.usable_memory_bytes

    @property
    def per_gpu_bytes(self) -> int:
        return self.memory.total

    @property
    def margin_bytes(self) -> int:
        """Usable memory minus the peak at the setup asked: negative when it does not fit."""
        return self.capacity_bytes - self.memory.total

    @property
    def limiting_component(self) -> str:
        return limiting_component(self.memory)

    @property
    def cpu_bytes_per_node(self) -> int:
        """Host memory for the offloaded states of the GPUs of one node (what runs, else the setup asked)."""
        mem = self.run_memory if self.run_memory is not None else self.memory
        return mem.cpu_bytes * min(self.num_gpus, self.node.gpus_per_node if self.node else 8)

    @property
    def hours(self) -> float | None:
        return self.cost.hours if self.cost else None

    @property
    def rent_usd(self) -> float | None:
        return self.cost.rent_usd if self.cost else None

    @property
    def purchase_usd(self) -> int | None:
        return self.cost.purchase_usd if self.cost else None


@dataclass(frozen=True)
class ScaleOut:
    """The fewest GPUs of one GPU type for one method and strategy, at the setup asked."""

    gpu: str
    method: str
    strategy: Strategy
    num_gpus: int | None  # None: not even max_gpus fit
    per_gpu_bytes: int | None
    cpu_bytes_per_node: int | None


@dataclass(frozen=True)
class PlanRequest:
    spec: ModelSpec
    setup: Setup
    gpus: tuple[Gpu, ...]
    methods: tuple[str, ...] = DEFAULT_TABLE
    options: MethodOptions = MethodOptions()
    max_gpus: int = 8
    tokens: int = 100_000_000
    epochs: float = 1.0
    mfu: float | None = None  # None: the kernel model (hardware/compute_time.py) times the step
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES
    nodes: tuple[Node, ...] = ()  # node types chosen with --node (at most one per GPU)
    node_catalogue: tuple[Node, ...] = ()  # the node types to default from (--node-file added); () = built-in
    steps: int | None = None  # optimizer steps instead of tokens x epochs

    def node_of(self, gpu: Gpu) -> Node:
        """The node type `gpu` sits in: the one chosen for it, else the catalogue's default (nodes.node_for)."""
        mine = [n for n in self.nodes if n.gpu == gpu.id]
        if mine:
            return mine[0]
        return node_for(gpu, {n.id: n for n in self.node_catalogue} if self.node_catalogue else None)

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on at the setup asked: micro-batch x accumulation x GPUs x sequence."""
        return self.setup.tokens_per_step

    @property
    def run_tokens(self) -> tuple[int, float]:
        """(tokens, epochs) of the run: `steps` optimizer steps of the setup asked (the global batch is the
        run's, so other GPU counts train the same tokens), else tokens x epochs."""
        if self.steps is not None:
            return self.steps * self.tokens_per_step, 1.0
        return self.tokens, self.epochs

    @property
    def optimizer_steps(self) -> float:
        tokens, epochs = self.run_tokens
        return tokens * epochs / self.tokens_per_step


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    options: tuple[Option, ...]
    scale_out: tuple[ScaleOut, ...]
    evaluations: int  # distinct (method, setup) pairs the searches evaluated

    def shortlist(self, k: int = 3) -> dict[str, tuple[Option, ...]]:
        """The `k` best runnable options by rent, by time and by number of GPUs."""
        ok, seen = [], set()
        for o in self.options:  # one entry per configuration that runs (an as-asked row with remedies can
            key = (o.gpu.id, o.method, o.run_setup)  # run exactly as a strategy row does)
            if o.runs and o.hours is not None and key not in seen:
                seen.add(key)
                ok.append(o)
        inf = float("inf")
        rent = lambda o: o.rent_usd if o.rent_usd is not None else inf  # noqa: E731
        return {
            # rent to the cent: with perfect scaling 1 and 8 GPUs cost the same, and fewer GPUs is simpler
            "cheapest": tuple(sorted((o for o in ok if o.rent_usd is not None),
                                     key=lambda o: (round(rent(o), 2), o.setup.gpus, o.hours))[:k]),
            "fastest": tuple(sorted(ok, key=lambda o: (o.hours, rent(o), o.setup.gpus))[:k]),
            "fewest GPUs": tuple(sorted(ok, key=lambda o: (o.setup.gpus, rent(o), o.hours))[:k]),
        }


def validate(request: PlanRequest) -> None:
    if request.steps is not None and (isinstance(request.steps, bool) or not isinstance(request.steps, int)
                                      or request.steps <= 0):
        raise PeftcalcError(f"--steps must be a positive integer, got {request.steps!r}")
    check_run(*request.run_tokens)
    if request.mfu is not None:
        check_mfu(request.mfu)
    if isinstance(request.max_gpus, bool) or not isinstance(request.max_gpus, int) or request.max_gpus < 1:
        raise PeftcalcError(f"--max-gpus must be a positive integer, got {request.max_gpus!r}")
    if request.setup.gpus > request.max_gpus:
        raise PeftcalcError(f"--gpus {request.setup.gpus} is more than --max-gpus {request.max_gpus}: "
                            f"raise --max-gpus to at least {request.setup.gpus}")
    if not request.gpus:
        raise PeftcalcError("no GPUs to plan for: give --gpu ID (see `peftcalc gpus`)")
    if not request.methods:
        raise PeftcalcError("no methods to plan for")


def flops_of(ev: Evaluator, method: str, setup: Setup) -> Flops:
    return training_flops_per_seq(ev.adaptation(method), setup.seq_len, setup.gradient_checkpointing)


def purchase_of(node: Node, gpu: Gpu, num_gpus: int) -> tuple[int | None, bool]:
    """Buying the GPUs in their servers: whole nodes at the node's price where sourced, else the GPUs at their
    price plus the ASSUMED host share (an estimate, flagged); Apple prices are whole machines. (price, estimated)"""
    nodes = -(-num_gpus // node.gpus_per_node)
    if node.purchase_usd is not None and num_gpus >= node.gpus_per_node:
        return nodes * node.purchase_usd, False
    if gpu.purchase_usd is None:
        return None, False
    if gpu.vendor == "apple":
        return purchase_usd(num_gpus, gpu.purchase_usd), False
    return round(purchase_usd(whole_nodes(num_gpus, node), gpu.purchase_usd) * (1 + ASSUMED_HOST_SHARE)), True


def rent_of(node: Node, gpu: Gpu, num_gpus: int, hours: float) -> float | None:
    """Renting: whole nodes at the node's hourly price where sourced, else the GPUs billed (whole nodes past
    one node) at the per-GPU price."""
    if node.rent_usd_per_hour is not None and num_gpus >= node.gpus_per_node:
        return hours * -(-num_gpus // node.gpus_per_node) * node.rent_usd_per_hour
    if gpu.rent_usd_per_hour is None:
        return None
    return rent_usd(hours, whole_nodes(num_gpus, node), gpu.rent_usd_per_hour)


def cost_of(ev: Evaluator, request: PlanRequest, gpu: Gpu, node: Node, method: str, run: Setup) -> Cost:
    """Time (one optimizer step by part, times the steps of the run), rent and purchase of `run` on its GPUs."""
    flops = flops_of(ev, method, run)
    total = run_flops(flops, *request.run_tokens)
    mfu = given_mfu(request.mfu)
    dtype = get_precision(run.precision).compute_dtype
    peak = gpu.flops_per_s(dtype)
    purchase, estimated = purchase_of(node, gpu, run.gpus)
    if peak is None:
        note = f"{gpu.id} has no {dtype} tensor cores: choose another --precision (fp16-mixed)"
        return Cost(flops, total, mfu, None, None, purchase, None, note, None, estimated)
    try:
        step = step_time(ev.adaptation(method), run, node, gpu, flops, request.mfu)
    except PeftcalcError as e:
        return Cost(flops, total, mfu, None, None, purchase, None, str(e), None, estimated)
    if mfu is None:
        mfu = Mfu(step.mfu, IMPLIED)
    tokens, epochs = request.run_tokens
    steps = tokens * epochs / step.tokens_per_step
    hours = steps * step.step_seconds / SECONDS_PER_HOUR
    rent = rent_of(node, gpu, run.gpus, hours)
    be = break_even_runs(purchase, rent) if purchase is not None and rent is not None else None
    return Cost(flops, total, mfu, hours, rent, purchase, be, None, step, estimated)


def evaluate_option(ev: Evaluator, request: PlanRequest, gpu: Gpu, method: str, setup: Setup, kind: str,
                    node: Node | None = None) -> Option:
    """The verdict, limits and cost of `method` at `setup` (its GPU count and strategy) on `gpu` in `node`."""
    node = node or request.node_of(gpu)
    cap = gpu.usable_memory_bytes
    memory = ev.memory(method, setup)
    remedies: tuple[str, ...] = ()
    run: Setup | None = None
    if memory.total <= cap:
        verdict, run = Verdict.FITS, setup
    else:
        found = find_remedies(ev, method, setup, cap)
        if found is None:
            verdict = Verdict.DOES_NOT_FIT
        else:
            verdict, (remedies, run) = Verdict.FITS_WITH, found
    if run is not None and run.offload and not host_memory_fits(node, ev.memory(method, run), run.num_gpus):
        verdict, remedies, run = Verdict.DOES_NOT_FIT, (), None  # the offloaded states exceed the node's host memory
    limits_at = run if run is not None else setup
    return Option(
        gpu=gpu, method=method, num_gpus=setup.num_gpus, zero_stage=setup.zero_stage, offload=setup.offload,
        kind=kind, setup=setup, memory=memory, verdict=verdict, remedies=remedies, run_setup=run,
        run_memory=ev.memory(method, run) if run is not None else None,
        max_batch_size=max_batch_size(ev, method, limits_at, cap),
        max_seq_len=max_seq_len(ev, method, limits_at, cap),
        flops=flops_of(ev, method, limits_at),
        cost=cost_of(ev, request, gpu, node, method, run) if run is not None else None,
        node=node,
    )


def _canonical(num_gpus: int, zero_stage: int, offload: bool) -> tuple[int, int, bool]:
    """On one GPU, ZeRO stages shard nothing: zero-k without offload is DDP, and every offload stage is
    ZeRO-Offload's zero-2+offload."""
    if num_gpus == 1:
        return (1, 2, True) if offload else (1, 0, False)
    return num_gpus, zero_stage, offload


def plan(request: PlanRequest, evaluator: Evaluator | None = None) -> Plan:
    """Every (GPU, method): the setup asked; then, per strategy in STRATEGIES order, its fewest GPUs (whole nodes
    past one node) when that is fewer than every option listed before (a frontier: zero-3 on 2 GPUs is not
    listed when zero-2 fits on 2); if nothing fits as asked on any number of GPUs, the most sharded option at
    --max-gpus, with what it would need. Every strategy's fewest GPUs is in `scale_out`."""
    validate(request)
    ev = evaluator or Evaluator(request.spec, request.options, request.overhead_bytes)
    options: list[Option] = []
    scale: list[ScaleOut] = []
    for gpu in request.gpus:
        node = request.node_of(gpu)
        for method in request.methods:
            _plan_pair(ev, request, gpu, node, method, options, scale)
    return Plan(request, tuple(options), tuple(scale), ev.calls)


def _plan_pair(ev: Evaluator, request: PlanRequest, gpu: Gpu, node: Node, method: str, options: list[Option],
               scale: list[ScaleOut]) -> None:
    setup, cap = request.setup, gpu.usable_memory_bytes
    start = len(options)
    asked = evaluate_option(ev, request, gpu, method, setup, "as asked", node)
    options.append(asked)
    seen = {_canonical(setup.num_gpus, setup.zero_stage, setup.offload)}
    best = setup.num_gpus if asked.fits else None
    for strategy in STRATEGIES:
        n = fewest_gpus(ev, method, setup, strategy, cap, request.max_gpus, node)
        if n is None:
            scale.append(ScaleOut(gpu.id, method, strategy, None, None, None))
            continue
        at = with_strategy(setup, n, strategy.zero_stage, strategy.offload)
        mem = ev.memory(method, at)
        scale.append(ScaleOut(gpu.id, method, strategy, n, mem.total, mem.cpu_bytes * min(n, node.gpus_per_node)))
        key = _canonical(n, strategy.zero_stage, strategy.offload)
        if (best is not None and n >= best) or key in seen:
            continue
        seen.add(key)
        best = n
        options.append(evaluate_option(ev, request, gpu, method, with_strategy(setup, *key), "fewest GPUs", node))
    fsdp = next((so.num_gpus for so in scale if so.gpu == gpu.id and so.method == method
                 and so.strategy.name == "zero-3"), None)
    if fsdp is None or fsdp > node.gpus_per_node:  # FSDP alone does not fit in one node: split the model
        options.extend(model_parallel_options(ev, request, gpu, node, method))
    if best is None and not any(o.runs for o in options[start:]):
        key = _canonical(gpu_limit(node, request.max_gpus), 3, True)
        if key not in seen:
            options.append(evaluate_option(ev, request, gpu, method, with_strategy(setup, *key), "max GPUs", node))


def model_parallel_options(ev: Evaluator, request: PlanRequest, gpu: Gpu, node: Node, method: str) -> list[Option]:
    """The fastest tensor/pipeline-parallel option and the one on the fewest GPUs (hardware/model_parallel.py)."""
    cap = gpu.usable_memory_bytes
    setups = candidates(request.spec, request.setup, node, request.max_gpus,
                        lambda s: ev.peak(method, s) <= cap)
    evaluated = [evaluate_option(ev, request, gpu, method, s, "tensor/pipeline", node) for s in setups]
    timed = [o for o in evaluated if o.runs and o.hours is not None]
    if not timed:
        return evaluated[:1]
    fastest = min(timed, key=lambda o: (o.hours, o.setup.gpus))
    fewest = min(timed, key=lambda o: (o.setup.gpus, o.hours))
    return [fastest] if fewest is fastest else [fastest, fewest]


def plan_methods(methods: Sequence[str] | None) -> tuple[str, ...]:
    """The methods to plan: those named (in the order given, duplicates dropped), or every one."""
    if not methods:
        return DEFAULT_TABLE
    for m in methods:
        make_method(m)  # unknown names fail with the list
    return tuple(dict.fromkeys(methods))
