"""Each published record against today's estimate of its run, in the quantity its source measured:

| the source measured | compared with |
|---|---|
| `max_allocated` (torch.cuda.max_memory_allocated) | the allocated peak |
| `peak_active` (torchtune/training/memory.py `get_memory_stats`: `memory_stats()["active_bytes.all.peak"]`, reset at every logged step: the allocator's active blocks, i.e. allocated ones plus freed ones still in use by another stream, equal to the allocated peak without side streams; peft #1469 prints both, equal to the byte) | the allocated peak |
| `max_reserved` | reserved |
| `reserved_p99` (peft: the 99th percentile of memory_reserved() after each step) | reserved (shown, not gated: a percentile over steps of varying length) |
| `device_used` (nvidia-smi) | the device total |
| `not_stated` | the closest of the three, flagged |

The gate of the done-when (`summarize`) is over the high- and medium-confidence records of the transformers
group (transformers + peft and the tools built on them, whose model code is transformers'); torchtune and
litgpt, whose model code differs, are summarised beside it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable

from peftcalc.evidence.mapping import Mapped, NotPredicted, map_record
from peftcalc.evidence.record import PublishedRecord

COMPARED = {"max_allocated": "allocated peak", "peak_active": "allocated peak", "max_reserved": "reserved",
            "reserved_p99": "reserved", "device_used": "device total"}
GATED_CONFIDENCE = ("high", "medium")
WITHIN = 10.0  # percent


@dataclass(frozen=True)
class Predicted:
    """The three quantities of the estimate of a record's run (bytes per GPU)."""

    tensor_peak: int
    allocated: int
    reserved: int
    total: int
    phase: str

    def quantity(self, name: str) -> int:
        return {"allocated peak": self.allocated, "reserved": self.reserved, "device total": self.total}[name]


@dataclass(frozen=True)
class PublishedComparison:
    record: PublishedRecord
    mapped: Mapped | None
    predicted: Predicted | None
    compared_with: str | None  # "allocated peak", "reserved" or "device total"
    reason: str | None = None  # why there is no prediction
    flags: tuple[str, ...] = ()

    @property
    def measured_bytes(self) -> int:
        return self.record.value_bytes

    @property
    def predicted_bytes(self) -> int | None:
        if self.predicted is None or self.compared_with is None:
            return None
        return self.predicted.quantity(self.compared_with)

    @property
    def error_percent(self) -> float | None:
        p = self.predicted_bytes
        return None if p is None else 100.0 * (p - self.measured_bytes) / self.measured_bytes

    @property
    def gated(self) -> bool:
        """In the done-when's set: transformers group, high/medium confidence, a peak quantity."""
        r = self.record
        return r.group == "transformers" and r.confidence in GATED_CONFIDENCE and r.quantity != "reserved_p99"

    @property
    def kind(self) -> str:
        """What bands are kept by: the method, whether the base is quantized, the group."""
        r = self.record
        method = self.mapped.method.name if self.mapped else r.method
        return f"{method}{'+nf4' if r.quantization and method in ('qlora', 'lora') else ''}@{r.group}"


def predict_mapped(m: Mapped) -> Predicted:
    from peftcalc.estimate import estimate_method

    mem = estimate_method(m.spec, m.method, m.setup, overhead=m.overhead).memory
    return Predicted(mem.peak_bytes, mem.allocated_bytes, mem.reserved_bytes, mem.total, mem.peak_phase)


def _closest(predicted: Predicted, value: int) -> str:
    return min(("allocated peak", "reserved", "device total"), key=lambda q: abs(predicted.quantity(q) - value))


def compare_record(r: PublishedRecord) -> PublishedComparison:
    mapped = map_record(r)
    if isinstance(mapped, NotPredicted):
        return PublishedComparison(r, None, None, None, reason=mapped.reason)
    try:
        predicted = predict_mapped(mapped)
    except Exception as e:  # noqa: BLE001 - one record the estimate cannot do is reported, not fatal
        return PublishedComparison(r, mapped, None, None, reason=f"the estimate failed: {type(e).__name__}: {e}")
    flags: list[str] = list(mapped.caveats)
    if r.quantity == "not_stated":
        target = _closest(predicted, r.value_bytes)
        flags.append(f"quantity not stated: compared with the closest, {target}")
    else:
        target = COMPARED[r.quantity]
    if r.quantity == "reserved_p99":
        flags.append("99th percentile of after-step samples over steps of varying length: shown, not gated")
    predicted, note = _with_generation(r, mapped, predicted)
    flags += [note] if note else []
    return PublishedComparison(r, mapped, predicted, target, flags=tuple(flags))


def _with_generation(r: PublishedRecord, m: Mapped, p: Predicted) -> tuple[Predicted, str | None]:
    """A run-wide peak that also spans evaluation by generation: the larger of the training step and generation
    (peftcalc/evidence/generation.py); a percentile of training steps is not touched."""
    from peftcalc.evidence.generation import evaluation_of, generation_bytes

    ev = evaluation_of(r)
    if ev is None or r.quantity == "reserved_p99":
        return p, None
    g = generation_bytes(m, *ev)
    if g.total <= p.allocated:
        return p, (f"the run-wide peak spans generation at batch {ev[0]} to {ev[1]} tokens: {g.total / 2**30:.1f} GiB "
                   f"(states, gradients, KV cache), below the training step: compared with the training step")
    extra = g.total - p.allocated
    return Predicted(p.tensor_peak, g.total, p.reserved + extra, p.total + extra, "generation"), \
        f"the run-wide peak is generation at batch {ev[0]} to {ev[1]} tokens ({g.total / 2**30:.1f} GiB)"


def compare_all(records: Iterable[PublishedRecord]) -> list[PublishedComparison]:
    return [compare_record(r) for r in records]


@dataclass(frozen=True)
class GroupSummary:
    name: str
    records: int  # in the group
    predicted: int  # with a prediction
    median: float | None  # |error| in percent
    within: float | None  # share within WITHIN percent
    p90: float | None
    worst: float | None


def p90(errors: list[float]) -> float:
    """The 90th percentile of sorted values (nearest rank)."""
    return errors[min(len(errors) - 1, max(0, -(-9 * len(errors) // 10) - 1))]


def summarize(name: str, comparisons: list[PublishedComparison]) -> GroupSummary:
    errors = sorted(abs(e) for c in comparisons if (e := c.error_percent) is not None)
    if not errors:
        return GroupSummary(name, len(comparisons), 0, None, None, None, None)
    within = 100.0 * sum(1 for e in errors if e <= WITHIN) / len(errors)
    return GroupSummary(name, len(comparisons), len(errors), statistics.median(errors), within, p90(errors),
                        errors[-1])
