"""What each GPU communicates in one optimizer step: the collectives of the data-, tensor- and pipeline-parallel
strategy, exact in bytes for what they model. Pure arithmetic over the adaptation's tensors; no hardware.

A collective is named by its kind and its PAYLOAD, the size of the full tensor it is called with (an all-reduce:
the tensor; an all-gather: the gathered output; a reduce-scatter: the input before scattering; a broadcast: the
tensor; a point-to-point send: the tensor). What a rank SENDS follows from the ring algorithm over n ranks
(Patarasuk & Yuan 2009; NCCL's "bus bandwidth" accounting, nccl-tests doc/PERFORMANCE.md): all-reduce
2(n-1)/n x payload, all-gather and reduce-scatter (n-1)/n x payload, broadcast (pipelined ring) (n-1)/n x payload,
send: the payload. Times (hardware/steptime.py) divide sent bytes by the bandwidth of the link crossed.

Per strategy (what the measured torchrun runs check, to the byte, for DDP and FSDP2):

- DDP (torch DistributedDataParallel): one all-reduce of every TRAINABLE gradient, in its dtype, bucketed
  (the sum of the buckets is the gradients; frozen weights have none), at the end of each step's last backward
  (no_sync on accumulation steps); and, with `broadcast_buffers=True` (its default), a broadcast of the model's
  buffers from rank 0 before every forward.
- ZeRO-1/2 (DeepSpeed): a reduce-scatter of the trainable gradients at the accumulation boundary, then an
  all-gather of the updated weights (their stored dtype) after the optimizer step (ZeRO paper section 7: the
  same 2x volume as DDP's all-reduce).
- ZeRO-3 / FSDP2 (`fully_shard(reshard_after_forward=True)` per block, then on the root, as accelerate's
  default and peftcalc's torchrun runs wrap it): every micro-batch all-gathers each unit's weights (every block,
  and the root's embeddings, final norm and head) in forward and again in backward, and reduce-scatters each
  unit's trainable gradients in backward (ZeRO paper section 7.2.2: 3 x the weights). FSDP2 pads every parameter's first dimension to a multiple of the ranks
  (torch/distributed/fsdp/_fully_shard/_fsdp_param.py: `padded_sharded_param_size`); the payloads include it.
- Tensor parallel (Megatron-LM, Shoeybi et al. 2019 section 3; Korthikanti et al. 2022 section 4.2.2): per block
  and micro-batch, 2 all-reduces of the (tokens x hidden) activation in forward and 2 in backward; with sequence
  parallelism 2 all-gathers + 2 reduce-scatters of the same size instead, in each direction (the same volume).
  The vocabulary-parallel loss's all-reduces of (tokens) floats are not counted (under 0.1 %).
- Pipeline parallel (1F1B, Narayanan et al. 2021): per micro-batch, a stage sends its output activation
  (tokens x hidden, compute dtype) forward and its input gradient back: the middle stages' volume (the first and
  last stages send one of the two); with sequence parallelism the activation is split over the tensor ranks
  (Megatron's scatter-gather optimisation).

Under tensor and pipeline parallelism a data-parallel rank holds 1/(tp x pp) of the weights: its gradient and
weight collectives are the model's divided by tp x pp (an approximation: norms are replicated over tensor ranks,
and stages differ by the embedding and head).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from peftcalc.methods.base import Adaptation, TensorGroup
from peftcalc.memory import buffer_bytes, tensor_bytes
from peftcalc.precision import Precision, get_precision
from peftcalc.setup import Setup
from peftcalc.units import dtype_bytes


class Kind(str, Enum):
    ALL_REDUCE = "all-reduce"
    ALL_GATHER = "all-gather"
    REDUCE_SCATTER = "reduce-scatter"
    BROADCAST = "broadcast"
    SEND = "send"


class Group(str, Enum):
    DP = "data"  # the data-parallel (ZeRO/FSDP) group
    TP = "tensor"
    PP = "pipeline"


class Phase(str, Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    AFTER_STEP = "after the optimizer step"


@dataclass(frozen=True)
class Collective:
    kind: Kind
    group: Group
    ranks: int  # size of the group
    phase: Phase
    payload_bytes: int  # per call
    calls: int  # per optimizer step
    what: str

    @property
    def sent_bytes_per_call(self) -> int:
        """Bytes one rank sends per call under the ring algorithm (rounded up to the byte)."""
        n = self.ranks
        if self.kind is Kind.SEND:
            return self.payload_bytes
        factor = 2 * (n - 1) if self.kind is Kind.ALL_REDUCE else n - 1
        return -(-factor * self.payload_bytes // n)

    @property
    def sent_bytes(self) -> int:
        return self.sent_bytes_per_call * self.calls

    @property
    def total_payload_bytes(self) -> int:
        return self.payload_bytes * self.calls


@dataclass(frozen=True)
class CommVolume:
    """Every collective of one optimizer step on one GPU."""

    collectives: tuple[Collective, ...]

    @property
    def sent_bytes(self) -> int:
        return sum(c.sent_bytes for c in self.collectives)

    def by_kind(self, group: Group | None = None) -> dict[str, dict[str, int]]:
        """{kind: {"calls", "payload_bytes", "sent_bytes"}} over the step (one group, or all)."""
        out: dict[str, dict[str, int]] = {}
        for c in self.collectives:
            if group is not None and c.group is not group:
                continue
            d = out.setdefault(c.kind.value, {"calls": 0, "payload_bytes": 0, "sent_bytes": 0})
            d["calls"] += c.calls
            d["payload_bytes"] += c.total_payload_bytes
            d["sent_bytes"] += c.sent_bytes
        return out


# ---- what a unit of the model holds --------------------------------------------------------------------------

def _stored_bytes(g: TensorGroup, precision: Precision) -> int:
    return dtype_bytes(precision.stored_dtype(g.added))


def padded_numel(g: TensorGroup, ranks: int) -> int:
    """FSDP2's all-gather size of one tensor: its first dimension padded up to a multiple of `ranks`."""
    dim0 = g.shape[0] if g.shape else g.numel
    rest = g.numel // dim0
    return -(-dim0 // ranks) * ranks * rest


@dataclass(frozen=True)
class Unit:
    """An FSDP unit (one block, or the root): what it all-gathers and what it reduce-scatters."""

    name: str
    weight_bytes: int  # padded, all parameters (frozen ones too)
    gradient_bytes: int  # padded, trainable parameters only
    count: int  # identical units (the blocks of a stack)


def fsdp_units(adaptation: Adaptation, precision: Precision, ranks: int) -> tuple[Unit, ...]:
    """The root and one unit per block stack (dense weights; quantized bases are not sharded by FSDP here)."""
    prefixes = [(p.replace("{i}", ""), c) for p, c in adaptation.spec.layer_prefixes()]
    blocks = {p: [0, 0, c] for p, c in prefixes}
    root = [0, 0]
    for g in adaptation.tensors:
        if g.format == "dense":
            size = padded_numel(g, ranks) * _stored_bytes(g, precision)
        else:  # a quantized base weight: its packed bytes (FSDP2 over bitsandbytes weights is not modelled further)
            size = tensor_bytes(g, precision, adaptation)
        stack = next((p for p, _ in prefixes if "{i}" in g.name and g.name.replace("{i}", "").startswith(p)), None)
        if stack is None:
            root[0] += size * g.count
            root[1] += size * g.count if g.trainable else 0
        else:
            blocks[stack][0] += size
            blocks[stack][1] += size if g.trainable else 0
    units = [Unit("root", root[0], root[1], 1)]
    units += [Unit(p.rstrip("."), w, gr, c) for p, (w, gr, c) in blocks.items()]
    return tuple(units)


def trainable_gradient_bytes(adaptation: Adaptation, precision: Precision) -> int:
    return sum(g.total * _stored_bytes(g, precision) for g in adaptation.tensors if g.trainable)


def weight_bytes(adaptation: Adaptation, precision: Precision) -> int:
    return sum(g.total * _stored_bytes(g, precision) for g in adaptation.tensors if g.format == "dense")


# ---- per strategy ---------------------------------------------------------------------------------------------

def data_parallel(adaptation: Adaptation, setup: Setup) -> list[Collective]:
    """The data-parallel group's collectives (see the module docstring)."""
    n, m = setup.num_gpus, setup.gradient_accumulation
    if n == 1:
        return []
    precision = get_precision(setup.precision)
    shard = setup.tensor_parallel * setup.pipeline_parallel
    grads = -(-trainable_gradient_bytes(adaptation, precision) // shard)
    dp = Group.DP
    if setup.zero_stage == 0:
        out = [Collective(Kind.ALL_REDUCE, dp, n, Phase.BACKWARD, grads, 1, "trainable gradients (DDP buckets)")]
        buffers = buffer_bytes(adaptation, precision)
        if buffers:
            out.append(Collective(Kind.BROADCAST, dp, n, Phase.FORWARD, buffers, m,
                                  "model buffers from rank 0 (DDP broadcast_buffers=True)"))
        return out
    if setup.zero_stage in (1, 2):
        weights = -(-weight_bytes(adaptation, precision) // shard)
        return [Collective(Kind.REDUCE_SCATTER, dp, n, Phase.BACKWARD, grads, 1, "trainable gradients"),
                Collective(Kind.ALL_GATHER, dp, n, Phase.AFTER_STEP, weights, 1, "updated weights")]
    out = []
    for u in fsdp_units(adaptation, precision, n):
        weights, grads_u = -(-u.weight_bytes // shard), -(-u.gradient_bytes // shard)
        if not weights:
            continue
        calls = m * u.count
        out.append(Collective(Kind.ALL_GATHER, dp, n, Phase.FORWARD, weights, calls, f"{u.name} weights"))
        out.append(Collective(Kind.ALL_GATHER, dp, n, Phase.BACKWARD, weights, calls, f"{u.name} weights again"))
        if grads_u:
            out.append(Collective(Kind.REDUCE_SCATTER, dp, n, Phase.BACKWARD, grads_u, m * u.count,
                                  f"{u.name} trainable gradients"))
    return out


def activation_bytes_per_microbatch(adaptation: Adaptation, setup: Setup) -> int:
    """One (tokens x hidden) activation of a micro-batch in the compute dtype."""
    tokens = setup.batch_size * (setup.seq_len + adaptation.extra_tokens)
    return tokens * adaptation.spec.arch.hidden_size * dtype_bytes(get_precision(setup.precision).compute_dtype)


def tensor_parallel(adaptation: Adaptation, setup: Setup) -> list[Collective]:
    t = setup.tensor_parallel
    if t == 1:
        return []
    act = activation_bytes_per_microbatch(adaptation, setup)
    blocks = -(-adaptation.spec.arch.num_layers // setup.pipeline_parallel)
    calls = 2 * blocks * setup.gradient_accumulation
    tp = Group.TP
    if setup.sequence_parallel:
        return [Collective(k, tp, t, ph, act, calls, "block activations (sequence parallel)")
                for ph in (Phase.FORWARD, Phase.BACKWARD) for k in (Kind.ALL_GATHER, Kind.REDUCE_SCATTER)]
    return [Collective(Kind.ALL_REDUCE, tp, t, ph, act, calls, "block activations (attention and MLP outputs)")
            for ph in (Phase.FORWARD, Phase.BACKWARD)]


def pipeline_parallel(adaptation: Adaptation, setup: Setup) -> list[Collective]:
    p = setup.pipeline_parallel
    if p == 1:
        return []
    act = activation_bytes_per_microbatch(adaptation, setup)
    if setup.sequence_parallel:
        act = -(-act // setup.tensor_parallel)
    m = setup.gradient_accumulation
    return [Collective(Kind.SEND, Group.PP, p, Phase.FORWARD, act, m, "stage output activation"),
            Collective(Kind.SEND, Group.PP, p, Phase.BACKWARD, act, m, "stage input gradient")]


def step_volume(adaptation: Adaptation, setup: Setup) -> CommVolume:
    """Every collective one GPU takes part in during one optimizer step."""
    return CommVolume(tuple(data_parallel(adaptation, setup) + tensor_parallel(adaptation, setup)
                            + pipeline_parallel(adaptation, setup)))
