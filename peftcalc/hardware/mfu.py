"""Default model FLOPs utilisation (MFU) per GPU family and method: ASSUMPTIONS, stated and overridable (--mfu).

MFU is achieved training FLOP/s over the GPU's dense peak for the compute dtype (PaLM, Chowdhery et al. 2022,
arXiv:2204.02311, appendix B). The planner applies it to the FLOPs counted in compute.py (recomputation
included). Published figures come from large, well-tuned pretraining runs; a fine-tuning run with the Hugging
Face Trainer at small batch is usually at or below them, so the defaults sit at the low end of what is
published. Every figure is a rough prior, not a measurement of your run: measure your own step time and pass
--mfu.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.compute import check_mfu
from peftcalc.hardware.catalogue import Gpu


@dataclass(frozen=True)
class Mfu:
    value: float  # fraction of the dense peak, in (0, 1]
    basis: str  # where the number comes from, for the assumptions section


# family -> (MFU for full or LoRA-style training in the compute dtype, basis)
FAMILY_MFU: dict[str, tuple[float, str]] = {
    "hopper": (0.40, "H100/H200: Llama 3 pretraining reached 38-43 % BF16 MFU on H100 (Dubey et al. 2024, "
                     "arXiv:2407.21783, Table 4); low end taken for fine-tuning"),
    "blackwell": (0.35, "B200: no published fine-tuning MFU yet; assumed below Hopper's 38-43 % while software matures"),
    "ampere": (0.45, "A100: Megatron-LM reached 52 % of peak on A100 (Narayanan et al. 2021, arXiv:2104.04473); "
                     "~40-50 % is typical for tuned bf16 training"),
    "ada": (0.35, "Ada (L40S, L4, RTX 4090, RTX 6000 Ada): GDDR cards with power-limited clocks; assumed below "
                  "the 40-50 % of HBM datacenter GPUs (no published MFU)"),
    "cdna3": (0.30, "MI300X: achieved BF16 training throughput well below its 1307 TFLOPS peak in public "
                    "benchmarks (SemiAnalysis, 'MI300X vs H100 vs H200 Benchmark Part 1: Training', 2024-12); assumed 30 %"),
    "cdna4": (0.30, "MI350X/MI355X: no published training MFU; assumed the MI300X's 30 % (same ROCm stack)"),
    "volta": (0.30, "V100: Megatron-LM sustained 39 TFLOPS per V100, 30 % of its 125 TFLOPS fp16 peak "
                    "(Shoeybi et al. 2019, arXiv:1909.08053)"),
    "turing": (0.25, "T4: 70 W card whose clocks drop below the boost the peak assumes; assumed 25 % (no published MFU)"),
    "apple-m": (0.25, "Apple M-series: the peak itself is an estimate (Apple publishes none) and MPS/MLX kernels "
                      "are less mature; assumed 25 % (no published MFU)"),
}

# Ampere cards with GDDR memory and workstation/consumer clocks: lower than the A100's figure.
GPU_MFU: dict[str, tuple[float, str]] = {
    gid: (0.35, "Ampere GDDR card (RTX 3090, RTX A6000, A10G): assumed below the A100's ~45 % (no published MFU)")
    for gid in ("rtx-3090", "a6000", "a10g")
}

UNKNOWN_FAMILY_MFU = 0.30

# Method factors on the GPU's MFU. QLoRA dequantizes its 4-bit base before every matmul (compute.py does not
# count that as FLOPs): Raschka 2023 ("Practical Tips for Finetuning LLMs Using LoRA", lightning.ai / Ahead of
# AI) reports 4-bit QLoRA saving ~33 % memory at ~39 % more training time than 16-bit LoRA on an A100:
# factor 1/1.39. A single report, so an assumption; dequantization cost shrinks with larger batches.
QUANTIZED_BASE_FACTOR = (round(1 / 1.39, 3), "quantized base (QLoRA): x0.72 for dequantizing the 4-bit base "
                                              "(QLoRA runs ~39 % longer than LoRA, Raschka 2023, 'Practical Tips "
                                              "for Finetuning LLMs Using LoRA')")


def default_mfu(gpu: Gpu, quantized_base: bool = False) -> Mfu:
    """The assumed MFU on `gpu`: the GPU's (or its family's) figure, times the dequantization factor for a
    quantized base."""
    if gpu.id in GPU_MFU:
        value, basis = GPU_MFU[gpu.id]
    elif gpu.family in FAMILY_MFU:
        value, basis = FAMILY_MFU[gpu.family]
    else:
        value, basis = UNKNOWN_FAMILY_MFU, f"no default for GPU family {gpu.family or '(none)'!r}; assumed 30 %"
    if quantized_base:
        factor, why = QUANTIZED_BASE_FACTOR
        value, basis = value * factor, f"{basis}; {why}"
    return Mfu(value, basis)


def mfu_for(gpu: Gpu, quantized_base: bool, override: float | None) -> Mfu:
    """--mfu replaces every default (GPU and method alike)."""
    if override is not None:
        check_mfu(override)
        return Mfu(override, "given with --mfu")
    return default_mfu(gpu, quantized_base)
