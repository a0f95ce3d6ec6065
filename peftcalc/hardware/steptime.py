"""The time of one optimizer step on a node type, by part: compute, communication, offload.

    step = compute (with the pipeline bubble) + the communication not hidden behind compute
           + the offload traffic and CPU optimizer step not hidden behind compute

Compute: the step's kernels at the GPU's achievable rates (compute_time.py: a roofline per matmul, fused attention,
memory-bound traffic, host launch time, the optimizer's traffic; kernels.py reads them off the replayed step,
rates.py says what the GPU reaches), or, with --mfu, the step's FLOPs (compute.py) / (dense peak x MFU). A
micro-batch's forward is its forward kernels; its backward the rest (recomputation included). Pipeline parallel
runs 1F1B (Narayanan et al. 2021, arXiv:2104.04473, section 2.2): m micro-batches over p stages take (m + p - 1)
micro-batch times, a bubble of (p - 1) / m. The optimizer step and gradient clipping follow the last micro-batch
(part of compute).

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
from peftcalc.memory import stored_dtype
from peftcalc.methods.base import Adaptation
from peftcalc.compute import check_mfu
from peftcalc.hardware.catalogue import Gpu
from peftcalc.hardware.compute_time import Compute, kernel_compute, mfu_compute, optimizer_seconds
from peftcalc.hardware.rates import rates_for
from peftcalc.precision import get_precision
from peftcalc.setup import Setup
from peftcalc.stepsim.result import replayable
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
    "optimizer": ("the GPU's optimizer step and gradient clipping are memory traffic at the GPU's bandwidth, counted "
                  "as torch's foreach/fused AdamW and clip_grad_norm_ access each tensor (compute_time.py), inside "
                  "compute"),
    "kernels": ("compute from the replayed step's kernels (kernels.py): every matmul by its roofline at the GPU's "
                "measured matmul rate, fused attention at FlashAttention-2's utilisation, other operators as memory "
                "traffic (bytes written x 2.5), host launch time where it exceeds the GPU's; torch.compile fuses "
                "pointwise operators (--compile); no data loading, logging or evaluation time"),
}


# Models the hand-written replay does not cover have no kernel list: their compute is a lower bound.
NO_KERNELS = ("no replayed kernels for this model or method (a traced activation profile has none): every model "
              "FLOP at the measured matmul rate, no attention, memory-bound or launch time: a lower bound")


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
    compute_parts: dict[str, float]  # compute_seconds by kind (matmul, attention, memory, host, optimizer, bubble)
    mfu: float  # model FLOPs (compute.py) / (compute_seconds x dense peak): the utilisation the time implies
    rates_basis: tuple[str, ...] = ()  # where the GPU's rates come from (empty under --mfu)

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


def step_time(adaptation: Adaptation, setup: Setup, node: Node, gpu: Gpu, flops: Flops, mfu: float | None = None,
              power_watts: int | None = None) -> StepTime:
    """One optimizer step of `setup` on GPUs `gpu` in `node` (see the module docstring for every assumption).
    `mfu`: time the compute at this utilisation of the dense peak instead of from the kernels (--mfu);
    `power_watts`: the GPUs run capped below their TDP (rates.py)."""
    dtype = setup.recipe.compute_dtype
    peak = gpu.flops_per_s(dtype)
    rates = rates_for(gpu, dtype, power_watts)
    if peak is None or rates is None:
        raise PeftcalcError(f"{gpu.id} has no {dtype} peak: its compute cannot be timed")
    basis = rates.basis if mfu is None else ()
    if mfu is not None:
        check_mfu(mfu)
        c = mfu_compute(flops, setup, peak, mfu)
    elif not replayable(adaptation):  # a derived architecture or peft method: no replayed kernels to time
        c = mfu_compute(flops, setup, int(rates.matmul_flops_per_s), 1.0)
        c = Compute(c.microbatch_seconds, c.forward_seconds, {"matmul (every FLOP)": c.microbatch_seconds})
        basis += (NO_KERNELS,)
    else:
        c = kernel_compute(adaptation, setup, rates)
    m, p = setup.gradient_accumulation, setup.pipeline_parallel
    bubble = (p - 1) * c.microbatch_seconds
    opt = optimizer_seconds(adaptation, setup, rates.memory_bytes_per_s)
    compute = m * c.microbatch_seconds + bubble + opt
    volume = step_volume(adaptation, setup)
    comm_total, comm_exposed = _communication(list(volume.collectives), setup, node, c)
    off_total, off_exposed = _offload(adaptation, setup, node, c)
    tokens = setup.seq_len * setup.batch_size * m * setup.num_gpus
    links = tuple(sorted({(g.value, *link_of(g, setup, node)) for g in {x.group for x in volume.collectives}}))
    parts = {k: m * v for k, v in c.parts.items()}
    parts["optimizer"] = opt
    if bubble:
        parts["pipeline bubble"] = bubble
    model_flops = flops.flops_per_seq * setup.batch_size * m / (setup.tensor_parallel * p)
    return StepTime(compute, comm_exposed, off_exposed, comm_total, off_total, bubble, opt, tokens, volume, links,
                    parts, model_flops / (compute * peak) if compute else 0.0, basis)


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
    grads = -(-sum(g.total * dtype_bytes(stored_dtype(g, precision)) for g in trainable) // shard)
    host = node.host_link.bytes_per_s_per_gpu
    if host is None:
        raise PeftcalcError(f"node {node.id} has no sourced host link bandwidth: offload cannot be timed")
    down, up = grads / host, grads / host  # the updated weights come back in their stored dtype, as the gradients went
    adam = params * CPU_ADAM_BYTES_PER_PARAM / (ASSUMED_HOST_MEMORY_BYTES_PER_S / node.gpus_per_node)
    total = down + adam + up
    exposed = max(0.0, down - c.backward_seconds) + adam + up
    if setup.offload_params:
        weights = -(-sum(g.total * dtype_bytes(stored_dtype(g, precision)) for g in adaptation.tensors
                         if g.format == "dense") // shard)
        fetch = 2 * setup.gradient_accumulation * setup.num_gpus * weights / host  # every rank gathers all shards
        total += fetch
        exposed += max(0.0, fetch - setup.gradient_accumulation * c.microbatch_seconds)
    return total, exposed
