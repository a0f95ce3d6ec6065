"""The time of one optimizer step on a node type, by part: compute, communication, offload.

    step = compute (with the pipeline bubble) + the communication not hidden behind compute
           + the offload traffic and CPU optimizer step not hidden behind compute

Compute: the step's FLOPs (compute.py, recomputation included) on one GPU, split over the tensor and pipeline
ranks, at the dense peak of the compute dtype times the assumed MFU (mfu.py). A micro-batch's forward is the
forward FLOPs; its backward the rest. Pipeline parallel runs 1F1B (Narayanan et al. 2021, arXiv:2104.04473,
section 2.2): m micro-batches over p stages take (m + p - 1) micro-batch times, a bubble of (p - 1) / m.

The optimizer step (on the GPU) is elementwise and memory-bound (the roofline model, Williams et al. 2009): AdamW
reads and writes every trainable weight, its master copy and its states once and reads its gradient, at the GPU's
memory bandwidth (an optimistic bound); it is part of compute.

Communication: every collective of collectives.py, the bytes a rank sends over the ring divided by the link the
ring crosses: the node's intra-node bandwidth while the group stays inside a node, its inter-node bandwidth per
GPU once it spans nodes (ranks are laid out tensor-parallel innermost, then data-parallel, then pipeline stages,
as Megatron-LM orders them). Line rates each way, no latency term, no collective efficiency factor: an
optimistic bound (NCCL's measured bus bandwidth is below line rate).

Overlap (ASSUMPTIONS, as the frameworks schedule them): DDP's bucketed all-reduce and ZeRO-1/2's reduce-scatter
run during the last micro-batch's backward (hidden up to its length); ZeRO-1/2's all-gather of updated weights
after the optimizer step is exposed; ZeRO-3/FSDP prefetches the next block's all-gather during forward and the
backward's all-gather and reduce-scatter during backward (hidden up to each phase's length, per micro-batch);
tensor-parallel all-reduces and pipeline sends are on the critical path (exposed).

Offload (ZeRO-Offload, Ren et al. 2021, arXiv:2101.06840, section 4): each step the rank's gradient shard goes to
the host over its host link (hidden behind the last backward), the CPU steps AdamW, and the updated 16-bit
weights come back (exposed); with parameter offload the weights also come up for every forward and backward
(hidden behind compute). CPU AdamW reads the fp32 weight, gradient and both moments and writes the weight, the
moments and the 16-bit copy: 30 bytes per parameter (DeepSpeed csrc/adam/cpu_adam_impl.cpp, Step_AVX), so its
time is bytes over host memory bandwidth — which no node file sources: ASSUMED 200 GB/s per node (about a third
of a two-socket DDR5 server's theoretical peak), shared by the node's GPU processes. No published absolute
CPU-Adam throughput was found (DeepSpeed's tutorial gives only "5X-7X faster than the standard PyTorch
implementation").
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.collectives import Collective, CommVolume, Group, Phase, step_volume
from peftcalc.compute import Flops
from peftcalc.errors import PeftcalcError
from peftcalc.hardware.nodes import Node
from peftcalc.methods.base import Adaptation
from peftcalc.optim import get_optimizer
from peftcalc.precision import get_precision
from peftcalc.setup import Setup
from peftcalc.units import dtype_bytes

ASSUMED_HOST_MEMORY_BYTES_PER_S = 200 * 10**9  # per node, for the CPU optimizer step (see the docstring)
CPU_ADAM_BYTES_PER_PARAM = 30  # read 4 x fp32, write 3 x fp32 + one 16-bit copy
ASSUMPTIONS = {
    "layout": "tensor-parallel ranks innermost (inside a node), then data-parallel, then pipeline stages",
    "links": "line rate each way per GPU, no latency, no collective efficiency factor (optimistic)",
    "overlap": ("DDP all-reduce and ZeRO-1/2 reduce-scatter hidden behind the last backward; ZeRO-1/2 weight "
                "all-gather exposed; ZeRO-3/FSDP all-gathers and reduce-scatters hidden behind forward and backward "
                "per micro-batch; tensor-parallel all-reduces and pipeline sends exposed"),
    "offload": ("gradients to the host hidden behind backward; CPU AdamW (30 B/parameter over an ASSUMED 200 GB/s "
                "of host memory bandwidth per node) and the weights' return exposed"),
    "pipeline": "1F1B: (m + p - 1) micro-batch times per step for m micro-batches over p stages",
    "optimizer": ("the GPU's optimizer step is memory traffic (each trainable weight, master copy and state read "
                  "and written once, each gradient read) at the GPU's memory bandwidth, inside compute"),
}


@dataclass(frozen=True)
class StepTime:
    compute_seconds: float  # the micro-batches' compute, the pipeline bubble included
    communication_seconds: float  # exposed: not hidden behind compute
    offload_seconds: float  # exposed
    communication_total_seconds: float  # every collective, before overlap
    offload_total_seconds: float
    bubble_seconds: float
    optimizer_seconds: float  # the optimizer step on the GPU, inside compute_seconds
    tokens_per_step: int  # data tokens of one optimizer step over all GPUs
    volume: CommVolume
    links: tuple[tuple[str, str, int], ...]  # (group, link kind, bytes/s each way) of the groups that communicate

    @property
    def step_seconds(self) -> float:
        return self.compute_seconds + self.communication_seconds + self.offload_seconds

    @property
    def by_part(self) -> dict[str, float]:
        return {"compute": self.compute_seconds, "communication": self.communication_seconds,
                "offload": self.offload_seconds}


def nodes_used(setup: Setup, node: Node) -> int:
    return -(-setup.gpus // node.gpus_per_node)


def group_spans_nodes(group: Group, setup: Setup, node: Node) -> bool:
    """Whether a group's ranks sit in different nodes (tensor ranks innermost, then data, then pipeline)."""
    inner = {Group.TP: setup.tensor_parallel, Group.DP: setup.tensor_parallel * setup.num_gpus,
             Group.PP: setup.gpus}[group]
    return inner > node.gpus_per_node


def link_of(group: Group, setup: Setup, node: Node) -> tuple[str, int]:
    """The link kind and bandwidth (bytes/s each way per GPU) a group's ring is limited by."""
    link = node.inter_node if group_spans_nodes(group, setup, node) else node.intra_node
    if link.bytes_per_s_per_gpu is None:
        where = "between" if link is node.inter_node else "inside"
        raise PeftcalcError(f"node {node.id} has no sourced bandwidth {where} its nodes: its {group.value}-parallel "
                            f"group cannot be timed (give the figure with --node-file)")
    return link.kind, link.bytes_per_s_per_gpu


def _seconds(cs: list[Collective], phase: Phase | None, setup: Setup, node: Node) -> float:
    return sum(c.sent_bytes / link_of(c.group, setup, node)[1] for c in cs if phase is None or c.phase is phase)


@dataclass(frozen=True)
class Compute:
    microbatch_seconds: float  # forward + backward of one micro-batch on one GPU (its 1/(tp x pp) share)
    forward_seconds: float

    @property
    def backward_seconds(self) -> float:
        return self.microbatch_seconds - self.forward_seconds


def compute_of(flops: Flops, setup: Setup, peak_flops_per_s: int, mfu: float) -> Compute:
    share = setup.tensor_parallel * setup.pipeline_parallel
    rate = peak_flops_per_s * mfu * share
    return Compute(flops.flops_per_seq * setup.batch_size / rate, flops.forward_flops_per_seq * setup.batch_size / rate)


def optimizer_seconds(adaptation: Adaptation, setup: Setup, memory_bytes_per_s: int | None) -> float:
    """The GPU's optimizer step as memory traffic: each trainable weight, master copy and state read and written
    once, each gradient read (ZeRO-1+ steps this rank's shard only; offload steps on the CPU)."""
    if setup.offload or not memory_bytes_per_s:
        return 0.0
    precision, opt = get_precision(setup.precision), get_optimizer(setup.optimizer)
    traffic = 0
    for g in adaptation.tensors:
        if not g.trainable:
            continue
        weight = g.total * dtype_bytes(precision.stored_dtype(g.added))
        master = g.total * 4 if precision.has_master(g.added) else 0
        states = opt.state_bytes(g, precision.state_dtype(g.added)) * g.count
        traffic += 2 * (weight + master + states) + weight
    ranks = setup.num_gpus if setup.zero_stage >= 1 else 1
    return traffic / (ranks * setup.tensor_parallel * setup.pipeline_parallel) / memory_bytes_per_s


def step_time(adaptation: Adaptation, setup: Setup, node: Node, flops: Flops, peak_flops_per_s: int,
              mfu: float, memory_bytes_per_s: int | None = None) -> StepTime:
    """One optimizer step of `setup` on GPUs of `node` (see the module docstring for every assumption);
    `memory_bytes_per_s` (the GPU's) times the optimizer step."""
    c = compute_of(flops, setup, peak_flops_per_s, mfu)
    m, p = setup.gradient_accumulation, setup.pipeline_parallel
    bubble = (p - 1) * c.microbatch_seconds
    opt = optimizer_seconds(adaptation, setup, memory_bytes_per_s)
    compute = m * c.microbatch_seconds + bubble + opt
    volume = step_volume(adaptation, setup)
    comm_total, comm_exposed = _communication(list(volume.collectives), setup, node, c)
    off_total, off_exposed = _offload(adaptation, setup, node, c)
    tokens = setup.seq_len * setup.batch_size * m * setup.num_gpus
    links = tuple(sorted({(g.value, *link_of(g, setup, node)) for g in {x.group for x in volume.collectives}}))
    return StepTime(compute, comm_exposed, off_exposed, comm_total, off_total, bubble, opt, tokens, volume, links)


def _communication(cs: list[Collective], setup: Setup, node: Node, c: Compute) -> tuple[float, float]:
    m = setup.gradient_accumulation
    total = _seconds(cs, None, setup, node)
    dp = [x for x in cs if x.group is Group.DP]
    exposed = _seconds([x for x in cs if x.group is not Group.DP], None, setup, node)  # tensor and pipeline
    if setup.zero_stage >= 3:
        forward = _seconds(dp, Phase.FORWARD, setup, node) / m
        backward = _seconds(dp, Phase.BACKWARD, setup, node) / m
        exposed += m * (max(0.0, forward - c.forward_seconds) + max(0.0, backward - c.backward_seconds))
    else:
        exposed += max(0.0, _seconds(dp, Phase.BACKWARD, setup, node) - c.backward_seconds)
        exposed += _seconds(dp, Phase.FORWARD, setup, node) + _seconds(dp, Phase.AFTER_STEP, setup, node)
    return total, exposed


def _offload(adaptation: Adaptation, setup: Setup, node: Node, c: Compute) -> tuple[float, float]:
    if not setup.offload:
        return 0.0, 0.0
    precision = get_precision(setup.precision)
    shard = setup.num_gpus * setup.tensor_parallel * setup.pipeline_parallel  # ZeRO-Offload needs stage >= 1
    trainable = [g for g in adaptation.tensors if g.trainable]
    params = -(-sum(g.total for g in trainable) // shard)
    grads = -(-sum(g.total * dtype_bytes(precision.stored_dtype(g.added)) for g in trainable) // shard)
    host = node.host_link.bytes_per_s_per_gpu
    if host is None:
        raise PeftcalcError(f"node {node.id} has no sourced host link bandwidth: offload cannot be timed")
    down, up = grads / host, grads / host  # the updated weights come back in their stored dtype, as the gradients went
    adam = params * CPU_ADAM_BYTES_PER_PARAM / (ASSUMED_HOST_MEMORY_BYTES_PER_S / node.gpus_per_node)
    total = down + adam + up
    exposed = max(0.0, down - c.backward_seconds) + adam + up
    if setup.offload_params:
        weights = -(-sum(g.total * dtype_bytes(precision.stored_dtype(g.added)) for g in adaptation.tensors
                         if g.format == "dense") // shard)
        fetch = 2 * setup.gradient_accumulation * setup.num_gpus * weights / host  # every rank gathers all shards
        total += fetch
        exposed += max(0.0, fetch - setup.gradient_accumulation * c.microbatch_seconds)
    return total, exposed
