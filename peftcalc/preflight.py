"""The pre-flight check: does this setup fit this GPU with room to spare, and if not, what change makes it fit.

A verdict from the same per-GPU peak `plan` uses (estimate.py's total: the tensor peak plus the stated CUDA
overhead lines) against the GPU's usable memory less a safety margin. When it does not fit, the change is the
planner's: the fewest of a smaller micro-batch, gradient checkpointing, adamw-8bit and optimizer offload
(planner.find_remedies); failing those, the fewest GPUs of this type with a sharding strategy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from peftcalc.errors import PeftcalcError
from peftcalc.estimate import MemoryBreakdown
from peftcalc.hardware.catalogue import Gpu
from peftcalc.hardware.planner import STRATEGIES, Evaluator, fewest_gpus, find_remedies, largest_part, with_strategy
from peftcalc.methods import MethodOptions
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup
from peftcalc.units import Unit

MARGIN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%|GB|GiB|MB|MiB)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Margin:
    """Memory to keep free: a share of the usable memory, or a number of bytes."""

    percent: float | None = 10.0
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Margin":
        m = MARGIN.fullmatch(str(text))
        if not m:
            raise PeftcalcError(f"--margin {text!r}: give a share of the GPU's usable memory (10%) or a size (2GB)")
        value, unit = float(m.group(1)), (m.group(2) or "%").lower()
        if unit == "%":
            if not 0 <= value < 100:
                raise PeftcalcError(f"--margin {text!r}: a share must be at least 0 % and below 100 %")
            return cls(percent=value)
        scale = {"gb": 10**9, "gib": 2**30, "mb": 10**6, "mib": 2**20}[unit]
        return cls(percent=None, bytes=int(value * scale))

    def reserve(self, usable_bytes: int) -> int:
        return int(usable_bytes * self.percent / 100) if self.percent is not None else int(self.bytes or 0)

    def text(self, unit: Unit) -> str:
        return f"{self.percent:g} %" if self.percent is not None else f"{(self.bytes or 0) / unit.bytes:,.2f} {unit.value}"


@dataclass(frozen=True)
class Change:
    """What makes it fit: a list of changes to the setup, the setup they give and its peak per GPU."""

    changes: tuple[str, ...]
    setup: Setup
    total_bytes: int


@dataclass(frozen=True)
class CheckResult:
    label: str  # what was checked (the config file)
    model: str
    method: str
    gpu: Gpu
    setup: Setup
    memory: MemoryBreakdown  # per GPU at the setup asked
    margin: Margin
    change: Change | None  # None when it fits, or when nothing tried fits

    @property
    def usable_bytes(self) -> int:
        return self.gpu.usable_memory_bytes

    @property
    def budget_bytes(self) -> int:
        """Usable memory less the margin: the most the peak may be."""
        return self.usable_bytes - self.margin.reserve(self.usable_bytes)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.budget_bytes

    @property
    def largest_part(self) -> tuple[str, int]:
        return largest_part(self.memory)


def check(spec: ModelSpec, method: str, options: MethodOptions, setup: Setup, gpu: Gpu, margin: Margin = Margin(),
          max_gpus: int = 8, label: str = "") -> CheckResult:
    ev = Evaluator(spec, options)
    memory = ev.memory(method, setup)
    result = CheckResult(label, spec.name, method, gpu, setup, memory, margin, None)
    if result.fits:
        return result
    return replace(result, change=_change(ev, method, setup, result.budget_bytes, max(max_gpus, setup.num_gpus)))


def _change(ev: Evaluator, method: str, setup: Setup, budget: int, max_gpus: int) -> Change | None:
    found = find_remedies(ev, method, setup, budget)
    if found is not None:
        remedies, run = found
        words = tuple(f"--batch {run.batch_size}" if r == "smaller batch" else r for r in remedies)
        return Change(words, run, ev.memory(method, run).total)
    best: tuple[int, str, Setup] | None = None
    for strategy in STRATEGIES:
        n = fewest_gpus(ev, method, setup, strategy, budget, max_gpus)
        if n is not None and n > setup.num_gpus and (best is None or n < best[0]):
            best = (n, strategy.name, with_strategy(setup, n, strategy.zero_stage, strategy.offload))
    if best is None:
        return None
    n, name, run = best
    return Change((f"--gpus {n} with {name}",), run, ev.memory(method, run).total)
