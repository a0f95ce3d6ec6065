"""The run backend: the same step as trace.py on real tensors, on the CPU or a CUDA GPU.

On every device the live-storage meter counts parameters, gradients, optimizer states, activations and the
peak exactly as the tracer does. On CUDA it also reads the allocator (`max_memory_allocated`,
`max_memory_reserved`, reset just before the measured step) and `mem_get_info` (memory outside the
allocator: the CUDA context, library workspaces, other processes), and times steps after the measured one.
Running out of memory is a result: `RunOutcome.oom` is set and the caller reports status "oom".

On the CPU a run whose predicted peak exceeds the available host memory is not started (Linux would kill
the process rather than raise): it is reported as "oom" with the numbers that decided it.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from peftcalc.measure.meter import LiveMeter
from peftcalc.results.record import CudaNumbers
from peftcalc.measure.adapted import build_adapted
from peftcalc.measure.allocator import AllocatorMeter, AllocatorProfile, uses_bitsandbytes
from peftcalc.measure.quantize import bitsandbytes_release
from peftcalc.measure.step import StepNumbers, measured_step, prepare_training
from peftcalc.measure.trace import model_facts
from peftcalc.methods.base import Adaptation, Method
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup


@dataclass
class RunOutcome:
    numbers: StepNumbers | None
    adaptation: Adaptation | None
    info: dict[str, Any] = field(default_factory=dict)
    oom: str | None = None  # the out-of-memory message when the step did not fit
    step_seconds: float | None = None
    cuda: CudaNumbers | None = None
    checkpoint_bytes: int | None = None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg.lower() or "can't allocate memory" in msg
                                            or "DefaultCPUAllocator" in msg)


def _sync(device: str):
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize()
    return None


def _timed_steps(prep, n: int, sync) -> float | None:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        loss = prep.forward_loss()
        loss.backward()
        del loss
        prep.optimizer.step()
        prep.optimizer.zero_grad(set_to_none=True)
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) if times else None


def run_step(spec: ModelSpec, method: Method, setup: Setup, device: str | None = None, timed_steps: int = 2,
             save: bool = True, seed: int = 0) -> RunOutcome:
    """Build, warm up, measure one step (and time `timed_steps` more) on real tensors on `device`."""
    device = device or default_device()
    cuda = device.startswith("cuda")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    prep = model = None
    try:
        model, adaptation, notes = build_adapted(spec, method, setup, device=device)
        info = model_facts(model)
        prep = prepare_training(model, spec, setup, device, notes)
        sync = _sync(device)
        allocator = None if cuda or not uses_bitsandbytes(adaptation, setup) else AllocatorProfile()
        meter = AllocatorMeter() if allocator is not None else LiveMeter(device_type="cuda" if cuda else None)
        if cuda:
            torch.cuda.synchronize()
        before = (lambda: torch.cuda.reset_peak_memory_stats()) if cuda else \
            (lambda: allocator.start(meter)) if allocator is not None else None
        with bitsandbytes_release(setup.bitsandbytes_version) as release:
            try:
                numbers = measured_step(prep, meter, sync=sync, before_measured=before)
            finally:
                if allocator is not None:
                    allocator.stop()
        prep.notes += [release] if release else []
        if allocator is not None:
            info["allocator"] = allocator.numbers(meter)
        cuda_numbers = None
        if cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            reserved = torch.cuda.memory_reserved()
            cuda_numbers = CudaNumbers(torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                                       total, free, total - free - reserved)
        step_seconds = _timed_steps(prep, timed_steps, sync) if timed_steps > 0 else numbers.step_seconds
        checkpoint = None
        if save:
            from peftcalc.measure.checkpoint_file import save_checkpoint

            checkpoint = save_checkpoint(prep.model)
        info["notes"] = prep.notes
        info["wall_seconds"] = time.perf_counter() - t0
        return RunOutcome(numbers, adaptation, info, None, step_seconds, cuda_numbers, checkpoint)
    except Exception as e:  # noqa: BLE001 - out of memory is a result; anything else propagates
        if not is_oom(e):
            raise
        msg = str(e).splitlines()[0][:500]
        return RunOutcome(None, None, {"wall_seconds": time.perf_counter() - t0}, oom=msg)
    finally:
        prep = model = None  # drop the model before emptying the CUDA cache (an OOM must not poison the next run)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def host_memory_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
