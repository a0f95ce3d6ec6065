"""What each GPU achieves: measured matmul rates quoted from their tables, the stated defaults, the power cap."""

from __future__ import annotations

import re
import statistics

import pytest

from peftcalc.hardware.catalogue import all_gpus, get_gpu
from peftcalc.hardware.rates import ATTENTION_EFFICIENCY, DEFAULT_MATMUL_EFFICIENCY, rates_for


def test_measured_rates_quote_their_rows():
    """Each measured rate appears in the row its source quotes (a single row), or is the median/mean of the quoted
    rows (several)."""
    for gpu in all_gpus():
        for value in (gpu.matmul_bf16_flops_per_s, gpu.matmul_fp16_flops_per_s):
            if value is None:
                continue
            src = gpu.matmul_source
            quoted = [float(x) for x in re.findall(r"\d+\.\d+", src)]
            tflops = value / 1e12
            assert tflops in quoted or re.search(r"\b(median|mean)\b", src), (gpu.id, tflops)
            if "median" in src or "mean" in src:
                assert min(quoted) <= tflops <= max(quoted), gpu.id
        if gpu.matmul_bf16_flops_per_s is None and gpu.matmul_fp16_flops_per_s is None:
            assert "no public measurement" in gpu.matmul_source


def test_the_default_efficiency_is_the_median_of_the_nvidia_rows():
    rows = [86.9, 83.8, 81.1, 80.3, 78.6, 77.6, 72.9]  # Bekman's MAMF table, NVIDIA BF16 rows
    assert DEFAULT_MATMUL_EFFICIENCY[0] == pytest.approx(statistics.median(rows) / 100)


def test_power_cap_rule_against_the_a100_pcie():
    """The A100 PCIe (300 W) reaches 252.9 TFLOPS where the A100 SXM (400 W) reaches 271.2 (MAMF table): the
    (P / TDP)^(1/3) clock rule gives 0.909 for their 0.932."""
    assert (300 / 400) ** (1 / 3) == pytest.approx(252.9 / 271.2, rel=0.03)
    a100 = get_gpu("a100-80gb")
    capped, full = rates_for(a100, "bf16", power_watts=300), rates_for(a100, "bf16")
    assert capped.matmul_flops_per_s / full.matmul_flops_per_s == pytest.approx((300 / 400) ** (1 / 3))
    assert capped.memory_bytes_per_s == full.memory_bytes_per_s
    assert rates_for(a100, "bf16", power_watts=500).matmul_flops_per_s == full.matmul_flops_per_s  # above TDP


def test_attention_efficiency_by_generation():
    assert rates_for(get_gpu("h100-80gb"), "bf16").attention_flops_per_s == pytest.approx(989.4e12 * 0.35)
    assert rates_for(get_gpu("a100-80gb"), "bf16").attention_flops_per_s == pytest.approx(312e12 * 0.50)
    assert {"ampere", "ada", "hopper"} == set(ATTENTION_EFFICIENCY)


def test_no_peak_no_rates():
    assert rates_for(get_gpu("t4"), "bf16") is None
    assert rates_for(get_gpu("t4"), "fp16").matmul_flops_per_s == pytest.approx(42.31e12)
