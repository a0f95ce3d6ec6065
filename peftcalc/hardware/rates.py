"""What a GPU achieves, as opposed to its datasheet peak: the rates the step-time model divides work by.

* Matrix multiplies: the GPU's measured achievable matmul rate where a public measurement exists (the catalogue's
  `matmul_bf16_flops_per_s` / `matmul_fp16_flops_per_s`, each file quoting its row: Bekman's Maximum Achievable
  Matmul FLOPS table for the data-centre GPUs, a public torch.mm benchmark table for the others), else the datasheet
  peak x DEFAULT_MATMUL_EFFICIENCY. That is the best shape's rate; a step's matmuls are costed by the roofline of
  each (steptime.py), so thin and small ones run at memory speed.
* Fused attention: the datasheet peak x ATTENTION_EFFICIENCY of the kernel generation PyTorch's sdpa runs there
  (FlashAttention-2's).
* Memory-bound work: the datasheet bandwidth (an optimistic bound: STREAM-like kernels reach 80-90 % of it).
* Launches: CPU_SECONDS_PER_LAUNCH of host time per kernel in eager mode.
* A power limit below the GPU's TDP (a cluster capping its GPUs) lowers the compute clocks: dynamic power is
  ~ C V^2 f with the voltage rising about linearly with the clock over the boost range (Weste & Harris, "CMOS VLSI
  Design", 4th ed., section 5.1), so a power-bound clock scales as (P / TDP)^(1/3). Check against the MAMF table:
  the A100 PCIe (300 W) reaches 252.9 of the A100 SXM's (400 W) 271.2 TFLOPS, 0.93; the rule gives 0.91.
  Memory bandwidth is left as it is (HBM clocks are not the SMs').
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.hardware.catalogue import Gpu

DEFAULT_MATMUL_EFFICIENCY = (0.803, "no public matmul measurement for this GPU: its peak x 0.803, the median "
                                    "efficiency of the NVIDIA rows of Bekman's Maximum Achievable Matmul FLOPS table "
                                    "(A100 SXM 86.9 %, GH200 83.8 %, A100 PCIe 81.1 %, H100 SXM 80.3 %, B300 78.6 %, "
                                    "B200 77.6 %, GB200 72.9 %; stas00/ml-engineering compute/accelerator/README.md "
                                    "at 7bc7c305)")
# family -> (fraction of the dense peak the fused attention kernels reach, forward + backward, source)
ATTENTION_EFFICIENCY: dict[str, tuple[float, str]] = {
    "ampere": (0.50, "FlashAttention-2 on A100: '50-73% of the theoretical maximum FLOPs/s' (Dao 2023, "
                     "arXiv:2307.08691, abstract); the low end, as the backward is slower than the forward"),
    "ada": (0.50, "FlashAttention-2 runs its Ampere kernels on Ada: the A100 figure, 50 % (Dao 2023, arXiv:2307.08691, "
                  "abstract) (ASSUMED: no published Ada figure)"),
    "hopper": (0.35, "'FlashAttention-2 achieves only 35% utilization on the H100 GPU' (Shah et al. 2024, "
                     "FlashAttention-3, arXiv:2407.08608, abstract); PyTorch's sdpa runs FlashAttention-2"),
}
DEFAULT_ATTENTION = (0.35, "ASSUMED as on Hopper, 35 % (Shah et al. 2024, arXiv:2407.08608): no published utilisation "
                           "of the attention kernels PyTorch's sdpa runs on this GPU")
# Host time per eager kernel launch: 'an overhead of ~7 microseconds for the simplest tensor operations'
# (pytorch/pytorch issue #41383: 6.8 s for a million `2*x` with requires_grad). A lower bound for model code
# (nn.Module hooks, Python around each operator); about what a backward operator costs from the C++ engine.
CPU_SECONDS_PER_LAUNCH = 7e-6


@dataclass(frozen=True)
class Rates:
    matmul_flops_per_s: float
    attention_flops_per_s: float
    memory_bytes_per_s: float
    cpu_seconds_per_launch: float
    basis: tuple[str, ...]  # where each rate comes from, for the assumptions


def measured_matmul(gpu: Gpu, dtype: str) -> int | None:
    return {"bf16": gpu.matmul_bf16_flops_per_s, "fp16": gpu.matmul_fp16_flops_per_s}.get(dtype)


def rates_for(gpu: Gpu, dtype: str, power_watts: int | None = None) -> Rates | None:
    """The rates of `gpu` computing in `dtype` (None where the GPU has no such peak), at `power_watts` if the GPU
    runs capped below its TDP."""
    peak = gpu.flops_per_s(dtype)
    if peak is None:
        return None
    measured = measured_matmul(gpu, dtype)
    if measured is not None:
        matmul, basis = float(measured), [f"matmuls at {measured / 1e12:,.0f} TFLOP/s measured ({gpu.matmul_source})"]
    else:
        eff, why = DEFAULT_MATMUL_EFFICIENCY
        matmul, basis = peak * eff, [f"matmuls at {peak * eff / 1e12:,.0f} TFLOP/s: {why}"]
    att, why = ATTENTION_EFFICIENCY.get(gpu.family, DEFAULT_ATTENTION)
    attention = peak * att
    basis.append(f"fused attention at {att:.0%} of the {peak / 1e12:,.0f} TFLOP/s peak: {why}")
    if power_watts is not None and gpu.tdp_watts and power_watts < gpu.tdp_watts:
        clock = (power_watts / gpu.tdp_watts) ** (1 / 3)
        matmul, attention = matmul * clock, attention * clock
        basis.append(f"capped at {power_watts} W of {gpu.tdp_watts} W: compute clocks x{clock:.3f} ((P / TDP)^(1/3), "
                     "hardware/rates.py)")
    basis.append(f"memory-bound work at the {gpu.memory_bandwidth_bytes_per_s / 1e9:,.0f} GB/s datasheet bandwidth")
    return Rates(matmul, attention, float(gpu.memory_bandwidth_bytes_per_s), CPU_SECONDS_PER_LAUNCH, tuple(basis))
