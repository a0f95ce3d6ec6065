"""The kernels one training micro-batch launches, read off the replayed step (stepsim): what the time model costs.

The replay runs the transformers + peft step operator by operator (activations.py uses it for memory). Run once more
with counting wrappers, it also says which kernels the step launches:

* every matrix multiply with its shape: each linear (base weights, LoRA's thin `lora_A`/`lora_B`, DoRA's `B @ A`,
  MoE experts, the head), eager attention's batched products; in forward, in the recomputation of checkpointed
  blocks, and in backward the input-gradient product (where the input needs a gradient) and the weight-gradient
  product (where the weight trains), as torch's `mm` derivative (derivatives.yaml) runs them. A frozen weight
  gets no weight-gradient product: LoRA's and prompt methods' savings are the products that do not run.
* every other operator's output (norms, casts, activations, rotary, residual adds, the loss, gradient sums):
  memory-bound work (the roofline model, Williams et al. 2009, CACM 52(4)). The replay knows what each writes;
  what it reads is not tracked, so the traffic is ASSUMED to be the bytes written x 2.5 (an elementwise operator
  reads one input of its output's size, a binary one two: 1.5 reads per write on average). Checked by hand on
  transformers' LlamaRMSNorm (36 bytes per element read and written, 40 by this rule) and rotary embedding.
* the 4-bit weights QLoRA dequantizes before each matmul that uses them (forward, recomputation, and the
  backward's input gradient): bitsandbytes' dequantize kernel reads the packed 4-bit codes (half a byte per
  weight, plus the absmax) and writes the 16-bit weight (2 bytes): 1.25 x the 16-bit weight's bytes (int8: 1.5 x).
* fused attention (flash, memory-efficient, flex): its FLOPs, counted as FlashAttention-2's benchmark does
  (Dao 2023, arXiv:2307.08691; flash-attention benchmarks/benchmark_flash_attention.py `flops`): forward
  4 x batch x queries x keys x heads x head_dim, halved when causal (the kernel skips the masked blocks), backward
  2.5 x the forward (it recomputes the scores); a recomputed block runs the forward again.
* under torch.compile (TorchInductor, Ansel et al. 2024, ASPLOS, "PyTorch 2"): chains of pointwise operators fuse
  into one kernel each, so an activation crosses memory only where a matmul or attention kernel (which Inductor
  calls as extern kernels) makes or consumes it. Fused traffic: every distinct activation entering a matmul is
  written once by the fused kernel that makes it, every matmul output read once by the one that consumes it (an
  ideal-fusion bound).

Launches (for the CPU-bound regime): one per allocating operator in eager mode (in-place operators and views
launch nothing that allocates; a few operators allocate twice), the matmuls and attention calls; under compile two
per extern kernel (the kernel and one fused neighbour).

Three layers per stack are replayed (the first, one middle standing for all, the last), as for memory; the middle
one's kernels count num_layers - 2 times.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from peftcalc.activations import sizes, step_config
from peftcalc.compute import attention_dim
from peftcalc.methods.base import Adaptation
from peftcalc.setup import Setup
from peftcalc.stepsim.engine import Sim, Storage, Tensor
from peftcalc.stepsim.model import Model, StepConfig
from peftcalc.stepsim.ops import Ops
from peftcalc.stepsim.poly import Poly, add_into, evaluate, numel, scale
from peftcalc.stepsim.replay import family_module
from peftcalc.units import DTYPE_BYTES

READ_WRITE = 2.5  # bytes moved per byte a non-matmul operator writes (see the module docstring)
DEQUANT_TRAFFIC = {"nf4": 1.25, "fp4": 1.25, "int8": 1.5}  # x the 16-bit weight's bytes, per dequantization
ENCODERS = frozenset({"bert", "roberta"})  # bidirectional attention: no causal halving (T5's decoder is causal,
# its encoder not: counted causal)
FA_BACKWARD = 2.5  # FlashAttention-2's backward FLOPs over its forward's
# Allocations made by matmul and attention kernels (costed as such, not as pointwise traffic), and dequantization
# (costed per call from the weight's size: the replay's uint8 temporaries are the CPU reference path's).
_EXTERN = frozenset({"mm", "addmm", "bmm", "baddbmm", "_grouped_mm", "MmBackward0", "AddmmBackward0", "BmmBackward0",
                     "BaddbmmBackward0", "_Dequant4MatmulBackward", "dequantize"})


@dataclass(frozen=True)
class Gemm:
    """`count` matrix multiplies of (m x k) by (k x n), whose second operand holds `weight` elements (k x n for a
    linear, batch x k x n for a batched product), `itemsize` bytes per element."""

    m: int
    k: int
    n: int
    weight: int
    itemsize: int
    count: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.count

    @property
    def bytes(self) -> int:
        """One call's operands read and output written."""
        return self.itemsize * (self.m * self.k + self.weight + self.m * self.n)


@dataclass(frozen=True)
class PhaseKernels:
    """The kernels of the forward or the backward (recomputation included) of one micro-batch."""

    gemms: tuple[Gemm, ...]
    attention_flops: int  # fused attention kernels (executed FLOPs, see the module docstring)
    pointwise_bytes: int  # eager: the other operators' traffic
    fused_bytes: int  # under torch.compile: activations in and out of matmuls, once each
    dequantize_bytes: int
    launches: int  # eager kernel launches
    extern_calls: int  # matmul and attention calls

    @property
    def gemm_flops(self) -> int:
        return sum(g.flops for g in self.gemms)


@dataclass(frozen=True)
class StepKernels:
    forward: PhaseKernels
    backward: PhaseKernels

    @property
    def phases(self) -> tuple[PhaseKernels, PhaseKernels]:
        return self.forward, self.backward


def step_kernels(adaptation: Adaptation, setup: Setup) -> StepKernels:
    """The kernels of one micro-batch of `setup` on one GPU (one data-parallel rank's whole model)."""
    cfg = step_config(setup, adaptation.spec.arch.family, adaptation=adaptation)
    return _kernels(adaptation, cfg, tuple(sorted(sizes(adaptation, setup).items())))


@lru_cache(maxsize=4096)
def _kernels(adaptation: Adaptation, cfg: StepConfig, values: tuple[tuple[str, int], ...]) -> StepKernels:
    phases, counts = _replay(adaptation, cfg)
    v = dict(values)
    causal = adaptation.spec.arch.family not in ENCODERS
    fwd, bwd = (_evaluate(p, dict(counts), v, adaptation, causal) for p in phases)
    return StepKernels(fwd, bwd)


# ---- the counting replay ------------------------------------------------------------------------------------

@dataclass
class _Phase:
    """Symbolic records of one phase: sizes stay polynomials in B, S, T, K until evaluated; keyed by layer tag."""

    gemms: list = field(default_factory=list)  # (tag, m, k, n, weight, itemsize): ints, symbols or polynomials
    written: dict = field(default_factory=dict)  # bytes the other operators write
    fused: dict = field(default_factory=dict)  # activations in and out of extern kernels, once each
    dequant: dict = field(default_factory=dict)
    launches: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)  # tag -> [forward calls, backward calls]


class _Counting(Sim):
    def __init__(self) -> None:
        super().__init__()
        self.records = {"forward": _Phase(), "backward": _Phase()}
        self.seen: weakref.WeakSet = weakref.WeakSet()  # activations already crossed memory once (fused traffic)
        self._previous = ""

    @property
    def now(self) -> _Phase:
        return self.records[self.phase]

    def _alloc(self, s: Storage) -> None:
        """Count the allocation (the memory bookkeeping of Sim is not needed here: live bytes are activations.py's)."""
        self.allocations += 1
        op, previous, self._previous = self.op, self._previous, self.op
        if op.endswith("_attention") or op.endswith("AttentionBackward0"):
            if op != previous:  # a call allocates its output, logsumexp (and scratch) one after the other
                calls = self.now.attention.setdefault(self.tag, [0, 0])
                calls["Backward" in op] += 1
            return
        if op in _EXTERN:
            return
        add_into(self.now.written.setdefault(s.tag, {}), s.size)
        self.now.launches[s.tag] = self.now.launches.get(s.tag, 0) + 1

    def _free(self, s: Storage) -> None:
        pass

    def fused_io(self, tensors: Sequence[Tensor]) -> None:
        """Activations entering or leaving an extern kernel: once each (see the module docstring)."""
        for t in tensors:
            if t.storage is None or t.storage in self.seen:
                continue
            self.seen.add(t.storage)
            add_into(self.now.fused.setdefault(self.tag, {}), scale(numel(t.shape), DTYPE_BYTES[t.dtype]))

    def gemm(self, m: Poly, k: Any, n: Any, weight: Poly, itemsize: int, dx: bool, dw: bool) -> None:
        """A product (m x k) @ (k x n) in the phase running, and the gradient products its backward will run:
        the input's (m x n) @ (n x k) when the input needs a gradient, the weight's (k x m) @ (m x n) when the
        weight trains (torch's mm derivative, derivatives.yaml). In backward the output's gradient is written by
        the fused kernel before, the input's gradient read by the one after."""
        self.now.gemms.append((self.tag, m, k, n, weight, itemsize))
        dx, dw = self.grad_enabled and dx, self.grad_enabled and dw
        back = self.records["backward"]
        if dx:
            back.gemms.append((self.tag, m, n, k, weight, itemsize))
        if dw:
            back.gemms.append((self.tag, k, m, n, _mul(m, n, 1), itemsize))
        if dx or dw:
            out_grad = _mul(m, n, itemsize)
            add_into(back.fused.setdefault(self.tag, {}), _plus(out_grad, _mul(m, k, itemsize)) if dx else out_grad)


def _mul(m: Poly, d: Any, item: int) -> Poly:
    """m x d x item as a polynomial (d an int or a symbol)."""
    return {tuple(sorted(mono + ((d,) if isinstance(d, str) else ()))): c * item * (1 if isinstance(d, str) else d)
            for mono, c in m.items()}


def _plus(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    add_into(out, b)
    return out


class _CountingOps(Ops):
    sim: _Counting

    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None, out_features: int, op: str = "mm") -> Tensor:
        out = super().linear(x, w, bias, out_features, op)
        experts = w.shape[0] if len(w.shape) == 3 else 1  # MoE: each row meets one expert's matrix of E
        k = x.shape[-1]
        self.sim.gemm(numel(x.shape[:-1]), k, out_features, {(): k * out_features * experts}, DTYPE_BYTES[out.dtype],
                      x.requires_grad, w.requires_grad)
        self.sim.fused_io([x, out])
        return out

    def matmul(self, a: Tensor, b: Tensor, shape: tuple, saved: Any = None, op: str = "bmm") -> Tensor:
        """Batched products (eager attention): (B.H.T x k) @ (k x n) per head, k and n possibly symbols."""
        out = super().matmul(a, b, shape, saved, op)
        self.sim.gemm(numel(tuple(shape[:-1])), a.shape[-1], shape[-1], numel(b.shape), DTYPE_BYTES[out.dtype],
                      a.requires_grad, b.requires_grad)
        self.sim.fused_io([a, out])
        return out


class _CountingModel(Model):
    sim: _Counting

    def __init__(self, sim: _Counting, adaptation: Adaptation, cfg: StepConfig) -> None:
        super().__init__(sim, adaptation, cfg)
        ops = _CountingOps(sim)
        ops.autocast, ops.device = self.f.autocast, self.f.device
        self.f = ops

    def _quantized(self, x: Tensor, lin: Any, fmt: str) -> Tensor:
        """QLoRA's base linear: a matmul with the dequantized weight, and its dequantization (again in backward
        for the input gradient)."""
        out = super()._quantized(x, lin, fmt)
        sim = self.sim
        weight = lin.in_features * lin.out_features
        sim.gemm(numel(x.shape[:-1]), lin.in_features, lin.out_features, {(): weight}, DTYPE_BYTES[out.dtype],
                 x.requires_grad, False)
        # (the weight dequantizes to QuantState.dtype, the loaded dtype, whatever kbit preparation upcasts)
        dequantized = DTYPE_BYTES[self.cfg.quant_dtype or self.cfg.compute_dtype]
        deq = {(): round(DEQUANT_TRAFFIC.get(fmt, 1.25) * weight * dequantized)}
        add_into(sim.now.dequant.setdefault(sim.tag, {}), deq)
        if sim.grad_enabled and x.requires_grad:
            add_into(sim.records["backward"].dequant.setdefault(sim.tag, {}), deq)
        sim.fused_io([x, out])
        return out


@lru_cache(maxsize=512)
def _replay(adaptation: Adaptation, cfg: StepConfig) -> tuple[tuple[_Phase, _Phase], tuple[tuple[str, int], ...]]:
    """The counting replay of one micro-batch (symbolic in the sizes), and each stack's layer count."""
    sim = _Counting()
    m = _CountingModel(sim, adaptation, cfg)
    loss = family_module(adaptation.spec.arch.family).forward(m)
    m.end_forward()
    sim.start_backward()
    if loss.node is not None:
        sim.op = "ones_like"
        seed = sim.new((), "fp32")
        sim.backward([(loss.node, loss.out_index, seed)])
        del seed
    sim.end_backward()
    return (sim.records["forward"], sim.records["backward"]), tuple((n, st.count) for n, st in sim.stacks.items())


def _times(tag: Any, counts: dict[str, int]) -> int:
    """How many layers a replayed record stands for: the middle layer counts for all but the first and last."""
    if tag is not None and tag[1] == "mid":
        return max(counts[tag[0]] - 2, 0)
    return 1


def _size(d: Any, v: dict[str, int]) -> int:
    """A size recorded as an int, a symbol or a polynomial, at the step's values."""
    if isinstance(d, dict):
        return evaluate(d, v)
    return v[d] if isinstance(d, str) else d


def _gemms(phase: _Phase, v: dict[str, int], counts: dict[str, int]) -> tuple[tuple[Gemm, ...], int]:
    """Every product of the phase aggregated by shape, and the number of calls."""
    found: dict[tuple, int] = {}
    for tag, m, k, n, weight, item in phase.gemms:
        key = (_size(m, v), _size(k, v), _size(n, v), _size(weight, v), item)
        found[key] = found.get(key, 0) + _times(tag, counts)
    return tuple(Gemm(*key, c) for key, c in sorted(found.items())), sum(found.values())


def _evaluate(phase: _Phase, counts: dict[str, int], v: dict[str, int], adaptation: Adaptation, causal: bool
              ) -> PhaseKernels:
    gemms, gemm_calls = _gemms(phase, v, counts)
    total = lambda d: sum(evaluate(p, v) * _times(tag, counts) for tag, p in d.items())  # noqa: E731
    forward = 4 * v["B"] * v["T"] * v["K"] * attention_dim(adaptation.spec) // (2 if causal else 1)
    fwd_calls = sum(c[0] * _times(tag, counts) for tag, c in phase.attention.items())
    bwd_calls = sum(c[1] * _times(tag, counts) for tag, c in phase.attention.items())
    extern = gemm_calls + fwd_calls + bwd_calls
    return PhaseKernels(
        gemms=gemms,
        attention_flops=round(forward * (fwd_calls + FA_BACKWARD * bwd_calls)),
        pointwise_bytes=round(total(phase.written) * READ_WRITE),
        fused_bytes=total(phase.fused),
        dequantize_bytes=total(phase.dequant),
        launches=sum(n * _times(tag, counts) for tag, n in phase.launches.items()) + extern,
        extern_calls=extern,
    )
