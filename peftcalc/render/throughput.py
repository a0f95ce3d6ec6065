"""`peftcalc validate --throughput` as a table and as JSON (peftcalc/throughput.py holds the model)."""

from __future__ import annotations

from typing import Any

from peftcalc.render.text import table
from peftcalc.throughput import Comparison, Summary

UNITS = {"tokens_per_second_per_gpu": "tokens/s/GPU", "train_step_seconds_total": "s (steps)"}


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _reason(excluded: str) -> str:
    """One line per kind of refusal (the rate checks name their figures; group them)."""
    if "measured matmul rate" in excluded:
        return "published rate above the GPU's measured matmul rate"
    if "paging them over PCIe" in excluded:
        return "paged optimizer states beyond the GPU's memory"
    return excluded.split(":")[0]


def throughput_text(comparisons: list[Comparison], s: Summary, target: float) -> str:
    done = [c for c in comparisons if c.error_percent is not None]
    rows = [[c.id, UNITS.get(c.metric, c.metric), _num(c.published), _num(c.predicted), f"{c.error_percent:+.1f} %",
             "-" if c.mfu is None else f"{c.mfu:.0%}", c.note or "-"] for c in done]
    out = ["Predicted vs published training throughput (error of the predicted TIME; the replayed step's kernels at "
           "each GPU's measured rates, nothing fitted to these records; MFU: what the predicted time implies)",
           table(["record", "metric", "published", "predicted", "time error", "MFU", "mapping assumptions"], rows,
                 align_left=2), ""]
    out.append(f"{s.points} records predicted, {s.excluded} not modelled; median |error| "
               f"{s.median_abs_percent:.1f} %, mean {s.mean_abs_percent:.1f} %, median signed "
               f"{s.median_signed_percent:+.1f} % (target {target:g} %: "
               f"{'reached' if s.median_abs_percent <= target else 'NOT reached'})")
    out.append("By source (median |error|): " + ", ".join(f"{k} {v:.1f} %" for k, v in s.by_source.items()))
    out.append("Worst: " + "; ".join(f"{c.id} {c.error_percent:+.1f} %" for c in s.worst))
    if s.held_out:
        out.append("Not applied, for reference: one time factor fitted on the other sources (leave one source out) "
                   "would give " + ", ".join(f"{k} x{f:.2f} -> {m:.1f} %" for k, (f, m) in s.held_out.items()))
    reasons: dict[str, int] = {}
    for c in comparisons:
        if c.excluded:
            reasons[_reason(c.excluded)] = reasons.get(_reason(c.excluded), 0) + 1
    out.append("Not modelled: " + "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
    return "\n".join(out)


def throughput_dict(comparisons: list[Comparison], s: Summary, target: float) -> dict[str, Any]:
    return {
        "summary": {"points": s.points, "excluded": s.excluded,
                    "median_abs_percent": None if s.median_abs_percent is None else round(s.median_abs_percent, 2),
                    "mean_abs_percent": None if s.mean_abs_percent is None else round(s.mean_abs_percent, 2),
                    "median_signed_percent": None if s.median_signed_percent is None
                    else round(s.median_signed_percent, 2),
                    "by_source_median_abs_percent": {k: round(v, 2) for k, v in s.by_source.items()},
                    "target_percent": target,
                    "reached": s.median_abs_percent is not None and s.median_abs_percent <= target,
                    "worst": [c.id for c in s.worst],
                    "held_out_factor": {k: {"factor": round(f, 4), "median_abs_percent": round(m, 2)}
                                        for k, (f, m) in s.held_out.items()}},
        "records": [{"id": c.id, "source": c.source, "metric": c.metric, "published": c.published,
                     "predicted": c.predicted, "error_percent": c.error_percent, "excluded": c.excluded,
                     "note": c.note or None, "mfu": c.mfu} for c in comparisons],
    }
