"""The measured step seen at the CPU allocator: what a dispatch-level counter cannot see.

`LiveMeter` counts the storages operators return. Scratch that lives and dies inside one operator is invisible
to it: bitsandbytes' `gemm_4bit` on the CPU (backends/default/ops.py `_gemm_4bit_default_impl`) dequantizes the
nested absmax and then the whole weight inside the one operator, and its 8-bit optimizer update
(backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu`) dequantizes both states of a tensor to fp32.

Here the measured step runs under `torch.profiler` with `profile_memory=True`: every CPU tensor storage is
allocated and freed by c10's DefaultCPUAllocator, which reports each allocation and free (signed bytes, time)
to the profiler (c10/core/CPUAllocator.cpp, `reportMemoryUsageToProfiler`). bitsandbytes' CPU kernels allocate
their outputs and temporaries with torch (`torch.empty`, ATen ops) and its C functions write into them
(csrc/cpu_ops.cpp `dequantizeBlockwise4bitCpu` allocates nothing), so nothing a kernel holds escapes this count.
The running sum of those events, from the start of the measured step, gives the allocator-level peak of each
phase; the events inside one operator give its scratch: the most it held above what it returned.
CPU only (a CUDA run has torch.cuda.max_memory_allocated for this).
"""

from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile, record_function

from peftcalc.measure.meter import LiveMeter
from peftcalc.results.record import AllocatorNumbers, OpScratch

PHASE_MARK = "peftcalc.phase:"
CONTAINERS = ("PythonDispatchMode",)  # the dispatch-level meter's own frame around every operator


class AllocatorMeter(LiveMeter):
    """A LiveMeter that also marks its phases for the profiler (one record_function range per phase)."""

    def __init__(self) -> None:
        super().__init__()
        self._range: Any = None

    def phase(self, name: str | None) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None
        if name is not None:
            self._range = record_function(PHASE_MARK + name)
            self._range.__enter__()
        super().phase(name)


class AllocatorProfile:
    """Start at the measured step (`start()`, from measured_step's `before_measured`), stop after it, read."""

    def __init__(self) -> None:
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
        self.baseline = 0

    def start(self, meter: LiveMeter) -> None:
        self.baseline = meter.current
        self.prof.start()

    def stop(self) -> None:
        self.prof.stop()

    def numbers(self, meter: LiveMeter, top: int = 5) -> AllocatorNumbers:
        events = self.prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and
                     str(e.device_type()).endswith("CPU"))
        phases = {e.name()[len(PHASE_MARK):]: (e.start_ns(), e.end_ns()) for e in events
                  if e.name().startswith(PHASE_MARK)}
        times, running, total = [], [], 0
        for t, n in mem:
            total += n
            times.append(t)
            running.append(total)
        peaks = {name: max((r for t, r in zip(times, running) if a <= t <= b), default=0)
                 for name, (a, b) in phases.items()}
        dispatch = {k: v - self.baseline for k, v in meter.phases.peaks.items()}
        return AllocatorNumbers(peaks, dispatch, _scratch(events, times, running, top))


def _scratch(events: Any, times: list[int], running: list[int], top: int) -> tuple[OpScratch, ...]:
    """Per operator name: the most allocated inside one call above what the call left allocated at its end; the
    `top` largest, and every bitsandbytes operator."""
    import bisect

    best: dict[str, tuple[int, int]] = {}
    for e in events:
        name = e.name()
        if name.startswith((PHASE_MARK, "[memory]")) or name in CONTAINERS or e.is_user_annotation() \
                or e.end_ns() <= e.start_ns():
            continue
        i, j = bisect.bisect_left(times, e.start_ns()), bisect.bisect_right(times, e.end_ns())
        if i >= j:
            continue
        before = running[i - 1] if i > 0 else 0
        inside = max(running[i:j]) - before
        scratch = inside - max(running[j - 1] - before, 0)
        held, calls = best.get(name, (0, 0))
        best[name] = (max(held, scratch), calls + 1)
    ranked = sorted(((n, s, c) for n, (s, c) in best.items() if s > 0), key=lambda x: -x[1])
    kept = ranked[:top] + [r for r in ranked[top:] if r[0].startswith("bitsandbytes::")]  # always bitsandbytes'
    return tuple(OpScratch(n, s, c) for n, s, c in kept)


def uses_bitsandbytes(adaptation: Any, setup: Any) -> bool:
    """A step whose bitsandbytes kernels hold scratch inside one operator: a quantized base or a bitsandbytes
    optimizer."""
    from peftcalc.optim import get_optimizer

    return bool(adaptation is not None and adaptation.quantized_base) or get_optimizer(setup.optimizer).bitsandbytes
