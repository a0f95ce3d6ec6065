"""`peftcalc validate --published` as text and JSON: a table per group (transformers + peft, then torchtune
and litgpt with the differences of their model code), the records not predicted with their reasons, the
counts, the gate and the worst records."""

from __future__ import annotations

from typing import Any

from peftcalc.evidence.compare import WITHIN, GroupSummary, PublishedComparison
from peftcalc.evidence.summary import GATE_MEDIAN, GATE_SHARE, GROUPS, Conclusion
from peftcalc.render.text import table

GiB = 2**30


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:,.2f}"


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:+.1f} %"


def _row(c: PublishedComparison) -> tuple[str, ...]:
    r = c.record
    return (r.id, r.confidence, r.quantity, _gib(c.measured_bytes), _gib(c.predicted_bytes), _pct(c.error_percent),
            (c.compared_with or "-"), "; ".join(c.flags)[:90])


def _summary_line(s: GroupSummary) -> str:
    if not s.predicted:
        return f"{s.name}: {s.records} records, none predicted"
    return (f"{s.name}: {s.predicted} of {s.records} records predicted; median |error| {s.median:.1f} %, "
            f"{s.within:.0f} % within {WITHIN:g} %, p90 {s.p90:.1f} %, worst {s.worst:.1f} %")


def published_text(comparisons: list[PublishedComparison], conclusion: Conclusion) -> str:
    header = ["record", "conf.", "quantity", "measured GiB", "estimated GiB", "error", "compared with", "flags"]
    out: list[str] = []
    for group in GROUPS:
        rows = [c for c in comparisons if c.record.group == group and c.error_percent is not None]
        if not rows:
            continue
        out += [f"== {group} ({len(rows)} predicted)", table(header, [_row(c) for c in rows])]
        diffs = sorted({d for c in rows if c.mapped for d in c.mapped.differences})
        out += [f"  model code: {d}" for d in diffs] + [""]
    out += _not_predicted(comparisons) + [""] + conclusion_lines(conclusion)
    return "\n".join(out)


def _not_predicted(comparisons: list[PublishedComparison]) -> list[str]:
    missing = [c for c in comparisons if c.error_percent is None]
    if not missing:
        return []
    return [f"== not predicted ({len(missing)})",
            table(["record", "conf.", "not predicted: reason"], [(c.record.id, c.record.confidence, c.reason or "")
                                                                 for c in missing])]


def conclusion_lines(s: Conclusion) -> list[str]:
    g = s.gate
    out = ["Summary (|error| of the quantity each source measured; GiB = 2^30 bytes)"]
    out += [f"  {_summary_line(x)}" for x in s.groups]
    out.append(f"  of the gated: {_summary_line(s.single_gpu)}")
    out.append(f"  of the gated: {_summary_line(s.several_gpus)}")
    out.append(f"  gated QLoRA records within {WITHIN:g} %: {g.qlora_within} of {g.qlora}")
    out.append(f"  gate ({_summary_line(g.summary)}): median <= {GATE_MEDIAN:g} %, >= {GATE_SHARE:g} % within "
               f"{WITHIN:g} %, every QLoRA record within {WITHIN:g} %: {'PASSED' if g.passed else 'FAILED'}")
    out.append("  worst gated records:")
    out += [f"    {c.record.id}: {_pct(c.error_percent)} ({'; '.join(c.flags) or 'no caveat flagged'})" for c in s.worst]
    for key, counts in s.counts.items():
        out.append(f"  by {key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out


def comparison_dict(c: PublishedComparison) -> dict[str, Any]:
    r, p, m = c.record, c.predicted, c.mapped
    return {"id": r.id, "where": r.where, "group": r.group, "framework": r.framework, "confidence": r.confidence,
            "method": r.method, "quantity": r.quantity, "measured_bytes": c.measured_bytes,
            "compared_with": c.compared_with, "predicted_bytes": c.predicted_bytes,
            "error_percent": None if c.error_percent is None else round(c.error_percent, 3), "gated": c.gated,
            "predicted": None if p is None else {"tensor_peak": p.tensor_peak, "allocated": p.allocated,
                                                 "reserved": p.reserved, "total": p.total, "phase": p.phase},
            "not_predicted": c.reason, "flags": list(c.flags),
            "setup": None if m is None else {"model": m.spec.name, "method": m.method.name,
                                             **{k: v for k, v in vars(m.setup).items()}},
            "notes": [] if m is None else list(m.notes), "differences": [] if m is None else list(m.differences)}


def _group_dict(s: GroupSummary) -> dict[str, Any]:
    return {"name": s.name, "records": s.records, "predicted": s.predicted, "median_percent": s.median,
            "within_percent": s.within, "p90_percent": s.p90, "worst_percent": s.worst}


def published_dict(comparisons: list[PublishedComparison], s: Conclusion) -> dict[str, Any]:
    g = s.gate
    return {"summary": {"gate": {**_group_dict(g.summary), "qlora": g.qlora, "qlora_within": g.qlora_within,
                                 "passed": g.passed, "median_limit_percent": GATE_MEDIAN,
                                 "share_limit_percent": GATE_SHARE, "within_percent_limit": WITHIN},
                        "one_gpu": _group_dict(s.single_gpu), "several_gpus": _group_dict(s.several_gpus),
                        "groups": [_group_dict(x) for x in s.groups],
                        "counts": s.counts, "not_predicted": s.not_predicted,
                        "worst": [c.record.id for c in s.worst]},
            "records": [comparison_dict(c) for c in comparisons]}
