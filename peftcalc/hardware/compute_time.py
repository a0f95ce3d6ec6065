"""The compute of one optimizer step on one GPU: the step's kernels (kernels.py) at the GPU's rates (rates.py).

Each phase (forward; backward with recomputation) of a micro-batch takes

    GPU time  = sum over matmuls of max(FLOPs / matmul rate, bytes / bandwidth)     (a roofline per matmul:
                 LoRA's thin products and small batches run at memory speed; Williams et al. 2009)
              + fused attention FLOPs / attention rate
              + memory-bound traffic (other operators, QLoRA's dequantization) / bandwidth
    host time = kernel launches x CPU_SECONDS_PER_LAUNCH (eager PyTorch launches asynchronously)
    phase     = max(GPU time, host time): a queue that never drains hides the host, and a step of tiny
                kernels waits for it (Horace He, "Making Deep Learning Go Brrrr From First Principles", 2022:
                the overhead-bound regime).

Under torch.compile (Setup.compile) the pointwise traffic is the fused bound of kernels.py and two launches per
matmul or attention call. The GPU's share of a tensor/pipeline-parallel model is the whole replica's kernels
divided by tp x pp (an approximation: the replay runs the replica, not one shard).

The optimizer step (on the GPU, after the last micro-batch) is memory traffic at the bandwidth:

* torch's foreach AdamW (`_multi_tensor_adam`, torch 2.13, non-capturable): decoupled weight decay `_foreach_mul_`
  (param read+write), `_foreach_lerp_` (exp_avg r+w, grad r), `_foreach_mul_` (exp_avg_sq r+w), `_foreach_addcmul_`
  (exp_avg_sq r+w, grad r twice), `_foreach_sqrt` (exp_avg_sq r, a temporary w), `_foreach_div_` and
  `_foreach_add_` (the temporary r+w each), `_foreach_addcdiv_` (param r+w, exp_avg r, temporary r): per element
  4 param + 14 state + 3 gradient accesses. The for-loop implementation runs the same operators per tensor.
* fused AdamW (`_fused_adamw_`, one kernel): param r+w, exp_avg r+w, exp_avg_sq r+w, grad r: 2 + 4 + 1.
* bitsandbytes 8-bit AdamW (one kernel per tensor): param r+w, grad r, two 1-byte states r+w (+ one absmax per
  256); its paged variant moves pages only under memory pressure, not modelled.
* other optimizers: param r+w, grad r, each state r+w (a one-kernel lower bound).
* an fp32 master copy: the gradient cast to fp32 (r + w) and the updated weight copied back (r + w) around it.
* gradient clipping (Setup.grad_clipping, torch.nn.utils.clip_grad_norm_ with foreach): `_foreach_norm` reads
  every gradient, `_foreach_mul_` by the clip coefficient reads and writes it (torch applies it unconditionally).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.compute import Flops
from peftcalc.hardware.rates import Rates
from peftcalc.kernels import PhaseKernels, StepKernels, step_kernels
from peftcalc.memory import has_master, state_dtype, stored_dtype
from peftcalc.methods.base import Adaptation
from peftcalc.optim import BNB_BLOCK, get_optimizer
from peftcalc.setup import Setup
from peftcalc.units import dtype_bytes

# (param, state, gradient) accesses per element of an AdamW step (see the module docstring)
ADAMW_ACCESSES = {"foreach": (4, 14, 3), "forloop": (4, 14, 3), "fused": (2, 4, 1)}
CLIP_ACCESSES = 3  # _foreach_norm reads each gradient, _foreach_mul_ reads and writes it


@dataclass(frozen=True)
class PhaseTime:
    """One phase of one micro-batch on one GPU."""

    matmul_seconds: float
    attention_seconds: float
    memory_seconds: float  # pointwise (or fused) traffic and dequantization
    launch_seconds: float  # host time launching the phase's kernels

    @property
    def gpu_seconds(self) -> float:
        return self.matmul_seconds + self.attention_seconds + self.memory_seconds

    @property
    def seconds(self) -> float:
        return max(self.gpu_seconds, self.launch_seconds)


@dataclass(frozen=True)
class Compute:
    microbatch_seconds: float  # forward + backward of one micro-batch on one GPU (its 1/(tp x pp) share)
    forward_seconds: float
    parts: dict[str, float]  # one micro-batch by kind: matmul, attention, memory, host (beyond the GPU's time)

    @property
    def backward_seconds(self) -> float:
        return self.microbatch_seconds - self.forward_seconds


def phase_time(k: PhaseKernels, rates: Rates, compiled: bool) -> PhaseTime:
    mm = sum(g.count * max(2 * g.m * g.k * g.n / rates.matmul_flops_per_s, g.bytes / rates.memory_bytes_per_s)
             for g in k.gemms)
    traffic = (k.fused_bytes if compiled else k.pointwise_bytes) + k.dequantize_bytes
    launches = 2 * k.extern_calls if compiled else k.launches
    return PhaseTime(mm, k.attention_flops / rates.attention_flops_per_s, traffic / rates.memory_bytes_per_s,
                     launches * rates.cpu_seconds_per_launch)


def kernel_compute(adaptation: Adaptation, setup: Setup, rates: Rates) -> Compute:
    """One micro-batch from its replayed kernels (see the module docstring)."""
    kernels: StepKernels = step_kernels(adaptation, setup)
    fwd, bwd = (phase_time(p, rates, setup.compile) for p in kernels.phases)
    share = setup.tensor_parallel * setup.pipeline_parallel
    parts = {"matmul": fwd.matmul_seconds + bwd.matmul_seconds,
             "attention": fwd.attention_seconds + bwd.attention_seconds,
             "memory": fwd.memory_seconds + bwd.memory_seconds,
             "host": fwd.seconds - fwd.gpu_seconds + bwd.seconds - bwd.gpu_seconds}
    return Compute((fwd.seconds + bwd.seconds) / share, fwd.seconds / share, {k: v / share for k, v in parts.items()})


def mfu_compute(flops: Flops, setup: Setup, peak_flops_per_s: int, mfu: float) -> Compute:
    """One micro-batch at a given MFU (--mfu: the user's measured utilisation): FLOPs / (peak x MFU)."""
    rate = peak_flops_per_s * mfu * setup.tensor_parallel * setup.pipeline_parallel
    total = flops.flops_per_seq * setup.batch_size / rate
    return Compute(total, flops.forward_flops_per_seq * setup.batch_size / rate, {"given MFU": total})


def optimizer_bytes(adaptation: Adaptation, setup: Setup) -> int:
    """Bytes the GPU's optimizer step (and gradient clipping) moves over the whole model (see the docstring)."""
    precision, name = setup.recipe, setup.optimizer
    opt = get_optimizer(name)
    total = 0
    for g in adaptation.tensors:
        if not g.trainable:
            continue
        stored = dtype_bytes(stored_dtype(g, precision))
        master = has_master(g, precision)
        p = 4 if master else stored  # the optimizer updates the master copy where there is one
        grad = 4 if master else stored
        if name in ("adamw-8bit", "paged-adamw-8bit") and g.numel >= 4096:
            per = 2 * p + grad + 2 * 2 + 2 * 2 * 4 / BNB_BLOCK
        elif name == "adamw":
            s = dtype_bytes(setup.optimizer_state_dtype or state_dtype(g, precision))
            ap, as_, ag = ADAMW_ACCESSES[setup.adamw_impl]
            per = ap * p + as_ * s + ag * grad
        else:
            s = opt.state_bytes(g, state_dtype(g, precision)) / max(g.numel, 1)
            per = 2 * p + grad + 2 * s
        if master:
            per += (stored + 4) + (4 + stored)  # the gradient cast up, the weight copied back
        if setup.grad_clipping:
            per += CLIP_ACCESSES * stored
        total += round(per * g.total)
    return total


def optimizer_seconds(adaptation: Adaptation, setup: Setup, memory_bytes_per_s: int | float | None) -> float:
    """The GPU's optimizer step over this rank's share (ZeRO-1+ shards it; offload steps it on the CPU)."""
    if setup.offload or not memory_bytes_per_s:
        return 0.0
    ranks = setup.num_gpus if setup.zero_stage >= 1 else 1
    share = ranks * setup.tensor_parallel * setup.pipeline_parallel
    return optimizer_bytes(adaptation, setup) / share / memory_bytes_per_s
