"""The analytic estimate against measured steps: relative errors per run, their summary, the history that
gives every estimate its uncertainty band. Pure: reads JSON lines, computes estimates; no torch.

A measured record is one line of bench/results/*.jsonl (`MeasureResult.to_dict()` plus the suite's "run"
keys), traced (fake tensors) or run (real tensors, CPU or GPU). Its setup is rebuilt from the record, the
estimate recomputed with the current code, and each quantity compared:

- peak: the most live tensor bytes of the step (measured) vs `MemoryBreakdown.peak_bytes`;
- weights (parameters, buffers and fp32 master copies), gradients, optimizer states: must agree to the byte;
- activations: live bytes after forward minus before it, vs `activation_bytes`.

Multi-process records compare each rank's bytes with the per-GPU estimate for that many GPUs and ZeRO stage.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from peftcalc.results.files import Record
from peftcalc.results.predict import repredict, request_of
from peftcalc.results.record import Bytes
from peftcalc.setup import Setup
from peftcalc.uncertainty import setup_kind

DEFAULT_TOLERANCE = 2.0  # percent: 95 % of runs must be within it
DEFAULT_MAX_TOLERANCE = 5.0  # percent: every run must be within it
DEFAULT_SHARE = 95.0  # percent of runs within the tolerance
EXACT_COMPONENTS = ("weights", "gradients", "optimizer_states")  # must agree to the byte


@dataclass(frozen=True)
class Comparison:
    """One measured run (or one rank of it) against today's estimate for the same setup."""

    label: str
    source: str  # results file and line
    backend: str
    device: str
    family: str
    model: str
    method: str
    setup: Setup | None
    measured: Bytes
    predicted: Bytes | None  # None: no prediction could be made (see `error`)
    measured_phase: str | None
    predicted_phase: str | None
    rank: int | None = None  # for multi-process runs: the rank compared
    error: str | None = None  # why no prediction could be made

    def relative_error(self, key: str) -> float | None:
        """(predicted - measured) / measured in percent; None when either is missing."""
        if self.predicted is None:
            return None
        m, p = getattr(self.measured, key), getattr(self.predicted, key)
        if m == 0:
            return 0.0 if p == 0 else None
        return 100.0 * (p - m) / m

    def difference(self, key: str) -> int | None:
        return None if self.predicted is None else getattr(self.predicted, key) - getattr(self.measured, key)

    @property
    def kind(self) -> str:
        return setup_kind(self.method, bool(self.setup and self.setup.gradient_checkpointing))


@dataclass(frozen=True)
class Summary:
    runs: int
    within: int  # runs with |peak error| <= tolerance
    median: float
    p90: float
    max: float
    tolerance: float
    max_tolerance: float
    share: float
    exact: dict[str, int] = field(default_factory=dict)  # per component: runs that agree to the byte

    @property
    def within_share(self) -> float:
        return 100.0 * self.within / self.runs if self.runs else 0.0

    @property
    def passed(self) -> bool:
        return self.runs > 0 and self.within_share >= self.share and self.max <= self.max_tolerance


def compare_record(record: Record) -> list[Comparison]:
    """The comparisons one measured record gives: one, or one per rank. Records that did not measure (oom,
    errors) give none."""
    r = record.result
    if r.status != "ok" or r.measured is None:
        return []
    label = request_of(record).label
    base = dict(source=record.source, backend=r.backend, device=r.device,
                family=r.model.family if r.model else "?", model=r.model.name if r.model else "?",
                method=str(r.method), setup=r.setup, measured_phase=r.peak_phase)
    try:
        prediction = repredict(record)
    except Exception as e:  # noqa: BLE001 - a record we cannot predict is reported, not fatal
        return [Comparison(label, measured=r.measured, predicted=None, predicted_phase=None,
                           error=f"{type(e).__name__}: {e}", **base)]
    if r.per_rank:
        return [Comparison(f"{label} rank{p.rank}", measured=p.measured, predicted=prediction.bytes,
                           predicted_phase=prediction.peak_phase, rank=p.rank, **base) for p in r.per_rank]
    return [Comparison(label, measured=r.measured, predicted=prediction.bytes, predicted_phase=prediction.peak_phase,
                       **base)]


STAND_IN_NOTE = ("QLoRA runs recorded before the real bitsandbytes path (their environment names no bitsandbytes): "
                 "they ran peftcalc's stand-in for it, which is gone; superseded by the real bitsandbytes runs "
                 "(bench/results/SUPERSEDED.md)")


def ran_the_stand_in(record: Record) -> bool:
    """A bitsandbytes run recorded without a bitsandbytes version: peftcalc's removed stand-in ran it."""
    r = record.result
    quantized = r.method == "qlora" or r.detail.method_options.get("base_storage") not in (None, "dense")
    return quantized and r.environment.bitsandbytes is None


def compare_all(records: Iterable[Record]) -> list[Comparison]:
    """Every comparison, once per run (the first record of a run), leaving out the stand-in's (STAND_IN_NOTE)."""
    seen: set[tuple] = set()
    out: list[Comparison] = []
    for rec in records:
        if ran_the_stand_in(rec):
            continue
        key = (rec.run_key or request_of(rec).label if rec.result.status == "ok" else rec.source,
               rec.result.backend, rec.result.device)
        if key in seen:  # the same run recorded twice (a resumed suite on another commit): keep the first
            continue
        seen.add(key)
        out.extend(compare_record(rec))
    return out


def _p90(sorted_errors: list[float]) -> float:
    return sorted_errors[min(len(sorted_errors) - 1, max(0, -(-9 * len(sorted_errors) // 10) - 1))]


def summarize(comparisons: list[Comparison], tolerance: float = DEFAULT_TOLERANCE,
              max_tolerance: float = DEFAULT_MAX_TOLERANCE, share: float = DEFAULT_SHARE) -> Summary:
    errors = sorted(abs(e) for c in comparisons if (e := c.relative_error("peak")) is not None)
    failed = sum(1 for c in comparisons if c.error is not None)
    exact = {k: sum(1 for c in comparisons if c.difference(k) == 0) for k in EXACT_COMPONENTS}
    if not errors:
        return Summary(len(comparisons), 0, 0.0, 0.0, float("inf") if failed else 0.0, tolerance, max_tolerance,
                       share, exact)
    worst = float("inf") if failed else errors[-1]
    return Summary(len(errors) + failed, sum(1 for e in errors if e <= tolerance), statistics.median(errors),
                   _p90(errors), worst, tolerance, max_tolerance, share, exact)


def history(comparisons: list[Comparison]) -> dict[str, Any]:
    """Per kind of setup: how many runs and their worst and p90 |peak error| (peftcalc.uncertainty's band)."""
    groups: dict[str, list[float]] = {}
    for c in comparisons:
        e = c.relative_error("peak")
        if e is not None:
            for k in {c.kind, c.method, "all"}:
                groups.setdefault(k, []).append(abs(e))
    return {"description": "peftcalc validate: |relative error| of the analytic peak against measured steps, by kind "
                           "of setup (method, +ckpt for gradient checkpointing); regenerate with "
                           "`peftcalc validate --write-history peftcalc/data/validation_history.json`",
            "kinds": {k: {"runs": len(v), "max_percent": round(max(v), 3), "p90_percent": round(_p90(sorted(v)), 3)}
                      for k, v in sorted(groups.items())}}
