"""The compute part of the step time: the roofline of each matmul, the optimizer's traffic against what torch's own
AdamW and clip_grad_norm_ read and write (counted from the operators they dispatch), compile, the power cap."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from peftcalc.estimate import adapt
from peftcalc.hardware.catalogue import get_gpu
from peftcalc.hardware.compute_time import ADAMW_ACCESSES, CLIP_ACCESSES, kernel_compute, optimizer_bytes, phase_time
from peftcalc.hardware.rates import Rates, rates_for
from peftcalc.kernels import Gemm, PhaseKernels
from peftcalc.methods import make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup

RATES = Rates(matmul_flops_per_s=100e12, attention_flops_per_s=50e12, memory_bytes_per_s=1e12,
              cpu_seconds_per_launch=7e-6, basis=())


def phase(gemms=(), attention=0, pointwise=0, fused=0, dequant=0, launches=0, extern=0) -> PhaseKernels:
    return PhaseKernels(tuple(gemms), attention, pointwise, fused, dequant, launches, extern)


def test_each_matmul_is_bound_by_compute_or_by_memory():
    """Williams et al. 2009: time = max(FLOPs / rate, bytes / bandwidth). A 4096-token product with a 4096 x 4096
    weight is compute-bound; LoRA's rank-8 product reads its 4096 x 4096 input for 2 x 8 FLOPs per element."""
    big = Gemm(4096, 4096, 4096, 4096 * 4096, 2, 1)
    thin = Gemm(4096, 4096, 8, 4096 * 8, 2, 1)
    assert phase_time(phase([big]), RATES, False).matmul_seconds == pytest.approx(2 * 4096**3 / 100e12)
    assert phase_time(phase([thin]), RATES, False).matmul_seconds == pytest.approx(thin.bytes / 1e12)


def test_host_time_shows_only_when_it_exceeds_the_gpus():
    busy = phase([Gemm(8192, 8192, 8192, 8192**2, 2, 1)], launches=10)
    tiny = phase(pointwise=1_000_000, launches=5000)
    assert phase_time(busy, RATES, False).seconds == phase_time(busy, RATES, False).gpu_seconds
    assert phase_time(tiny, RATES, False).seconds == pytest.approx(5000 * 7e-6)
    # compiled: fused traffic and two launches per extern call
    compiled = phase_time(phase(pointwise=10**9, fused=10**8, launches=5000, extern=100), RATES, True)
    assert compiled.memory_seconds == pytest.approx(1e-4) and compiled.launch_seconds == pytest.approx(200 * 7e-6)


class Traffic(TorchDispatchMode):
    """Bytes each operator reads (every tensor argument) and writes (its outputs, and the arguments its schema marks
    as mutated), over tensors of at least `min_numel` elements (AdamW's step counters are scalars)."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel, self.read, self.written, self.ops = min_numel, 0, 0, []

    def _bytes(self, x) -> int:
        items = x if isinstance(x, (list, tuple)) else [x]
        return sum(t.numel() * t.element_size() for t in items
                   if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        read = written = 0
        for a, value in zip(func._schema.arguments, args):
            read += self._bytes(value)
            if a.alias_info is not None and a.alias_info.is_write:
                written += self._bytes(value)
        if not func._schema.is_mutable and out is not None:
            written += self._bytes(out)
        if read or written:
            self.ops.append(func.overloadpacket.__name__)
        self.read, self.written = self.read + read, self.written + written
        return out


def _adamw_traffic(foreach: bool, dtype: torch.dtype) -> tuple[int, list[str]]:
    p = [torch.nn.Parameter(torch.randn(1000, 64, dtype=dtype)) for _ in range(3)]
    for t in p:
        t.grad = torch.randn_like(t)
    opt = torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, foreach=foreach, fused=not foreach)
    opt.step()  # states created
    mode = Traffic(min_numel=1000)
    with mode:
        opt.step()
    return mode.read + mode.written, mode.ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_foreach_adamw_accesses_are_torchs(dtype):
    """torch.optim.AdamW(foreach=True) on CPU tensors dispatches the same _foreach_ operators as on CUDA: each
    element is read or written 4 (param) + 14 (states, temporary) + 3 (gradient) times."""
    traffic, ops = _adamw_traffic(True, dtype)
    elements = 3 * 1000 * 64 * torch.finfo(dtype).bits // 8
    assert traffic == sum(ADAMW_ACCESSES["foreach"]) * elements
    assert "_foreach_addcdiv_" in ops and "_foreach_lerp_" in ops


def test_fused_adamw_is_one_operator_over_the_four_tensors():
    _, ops = _adamw_traffic(False, torch.float32)
    assert ops == ["_fused_adamw_"]
    assert ADAMW_ACCESSES["fused"] == (2, 4, 1)  # param r+w, two states r+w, gradient r


def test_clip_grad_norm_accesses_are_torchs():
    p = [torch.nn.Parameter(torch.randn(1000, 64)) for _ in range(3)]
    for t in p:
        t.grad = torch.randn_like(t)
    mode = Traffic(min_numel=1000)
    with mode:
        torch.nn.utils.clip_grad_norm_(p, 1.0, foreach=True)
    assert mode.read + mode.written == CLIP_ACCESSES * 3 * 1000 * 64 * 4


def test_optimizer_bytes_of_pure_bf16_full_training():
    """Pure bf16 (MetaMathQA's full fine-tuning): foreach AdamW 21 accesses of 2 bytes and clipping 3, per weight."""
    spec = get_model("llama-2-7b")
    full = adapt(spec, make_method("full"))
    setup = Setup(precision="bf16")
    assert optimizer_bytes(full, setup) == (21 + 3) * 2 * spec.total_params
    assert optimizer_bytes(full, replace(setup, adamw_impl="fused", grad_clipping=False)) == 7 * 2 * spec.total_params


def test_compile_fuses_and_the_power_cap_slows_compute():
    spec = get_model("llama-2-7b")
    lora = adapt(spec, make_method("lora"))
    setup = Setup(precision="bf16", batch_size=2, seq_len=2048)
    h100 = get_gpu("h100-80gb")
    eager = kernel_compute(lora, setup, rates_for(h100, "bf16"))
    compiled = kernel_compute(lora, replace(setup, compile=True), rates_for(h100, "bf16"))
    assert compiled.parts["memory"] < eager.parts["memory"] / 3 and compiled.parts["matmul"] == eager.parts["matmul"]
    capped = kernel_compute(lora, setup, rates_for(h100, "bf16", power_watts=500))
    clock = (500 / 700) ** (1 / 3)
    assert capped.parts["matmul"] == pytest.approx(eager.parts["matmul"] / clock, rel=0.05)
    assert capped.parts["memory"] == eager.parts["memory"]  # HBM is not the SMs' clock
