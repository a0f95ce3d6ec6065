"""What `peftcalc validate --published` concludes: the done-when gate over the gated records, the other
frameworks beside it, counts by confidence, framework and quantity, the worst records, and the bands the
estimate prints (written to peftcalc/data/published_bands.json by `--write-bands`).

    >>> s = conclude(compare_all(load_records()))     # doctest: +SKIP
    >>> s.gate.passed, s.gate.summary.median            # doctest: +SKIP
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import Any

from peftcalc.evidence.compare import WITHIN, GroupSummary, PublishedComparison, p90, summarize

GATE_MEDIAN = 5.0  # percent: the median |error| of the gated records may not exceed it
GATE_SHARE = 80.0  # percent of the gated records within WITHIN
GROUPS = ("transformers", "torchtune", "litgpt")


@dataclass(frozen=True)
class Gate:
    summary: GroupSummary
    qlora: int  # gated QLoRA records with a prediction
    qlora_within: int  # of them within WITHIN percent

    @property
    def passed(self) -> bool:
        s = self.summary
        return (s.predicted > 0 and s.median is not None and s.median <= GATE_MEDIAN and (s.within or 0) >= GATE_SHARE
                and self.qlora_within == self.qlora)


@dataclass(frozen=True)
class Conclusion:
    gate: Gate
    single_gpu: GroupSummary  # the gated records of one-GPU runs
    several_gpus: GroupSummary  # the gated records of sharded or data-parallel runs
    groups: tuple[GroupSummary, ...]  # high+medium confidence, by group (the gated set's group first)
    counts: dict[str, dict[str, int]]  # by confidence, framework, quantity; predicted or not
    worst: tuple[PublishedComparison, ...]  # the gated records with the largest |error|
    not_predicted: dict[str, int]  # reason -> records


def is_qlora(c: PublishedComparison) -> bool:
    return c.record.quantization is not None and c.record.method in ("qlora", "lora") and \
        c.record.quantization.library in ("bitsandbytes", "torchao")


def gate(comparisons: list[PublishedComparison]) -> Gate:
    gated = [c for c in comparisons if c.gated]
    q = [c for c in gated if is_qlora(c) and c.error_percent is not None]
    return Gate(summarize("transformers + peft (high, medium)", gated), len(q),
                sum(1 for c in q if abs(c.error_percent or 0) <= WITHIN))


def counts(comparisons: list[PublishedComparison]) -> dict[str, dict[str, int]]:
    out: dict[str, collections.Counter] = {k: collections.Counter() for k in ("confidence", "framework", "quantity")}
    for c in comparisons:
        r, done = c.record, "predicted" if c.error_percent is not None else "not predicted"
        out["confidence"][f"{r.confidence} ({done})"] += 1
        out["framework"][f"{r.framework} ({done})"] += 1
        out["quantity"][f"{r.quantity} ({done})"] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def conclude(comparisons: list[PublishedComparison], worst: int = 5) -> Conclusion:
    g = gate(comparisons)
    single = summarize("one GPU", [c for c in comparisons if c.gated and (c.record.gpus or 1) == 1])
    several = summarize("several GPUs", [c for c in comparisons if c.gated and (c.record.gpus or 1) > 1])
    groups = tuple(summarize(name, [c for c in comparisons if c.record.group == name and c.record.confidence in
                                    ("high", "medium")]) for name in GROUPS)
    ranked = sorted((c for c in comparisons if c.gated and c.error_percent is not None),
                    key=lambda c: -abs(c.error_percent or 0))
    reasons = collections.Counter(c.reason for c in comparisons if c.reason is not None)
    return Conclusion(g, single, several, groups, counts(comparisons), tuple(ranked[:worst]),
                      dict(reasons.most_common()))


def bands(comparisons: list[PublishedComparison]) -> dict[str, Any]:
    """Per kind (peftcalc's method, "+sharded" for several GPUs): how many gated published runs, and the 90th
    percentile and median of their |error|, the quantity each measured (peftcalc.uncertainty's band)."""
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for c in comparisons:
        if not c.gated or c.error_percent is None or c.mapped is None:
            continue
        kind = c.mapped.method.name + (" +sharded" if c.mapped.setup.num_gpus > 1 else "")
        groups[kind].append(abs(c.error_percent))
    out = {kind: {"runs": len(e), "p90_percent": round(p90(sorted(e)), 2),
                  "median_percent": round(statistics.median(e), 2)} for kind, e in sorted(groups.items())}
    return {"description": "peftcalc validate --published: |relative error| of the estimate against published GPU runs "
                           "(transformers + peft, high and medium confidence), in the quantity each source measured, "
                           "by kind (peftcalc's method, +sharded for several GPUs); regenerate with `peftcalc validate "
                           "--published --write-bands peftcalc/data/published_bands.json`",
            "kinds": out}
