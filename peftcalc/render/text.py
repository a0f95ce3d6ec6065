"""Numbers and tables as text: the one place (with units.py) that formats numbers for people."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from peftcalc.units import Unit


def fmt_bytes(n: int, unit: Unit) -> str:
    v = n / unit.bytes
    if v and abs(v) < 0.1:  # small adapters: three significant digits rather than 0.00, never an exponent
        places = 2 - math.floor(math.log10(abs(v)))
        return f"{v:.{places}f} {unit.value}"
    return f"{v:,.2f} {unit.value}"


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_percent(p: float) -> str:
    return f"{p:.4g} %" if p < 1 else f"{p:.2f} %"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align_left: int = 1) -> str:
    """A plain text table: the first `align_left` columns left-aligned, the rest right-aligned."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < align_left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# ---- estimate ------------------------------------------------------------------------------------


def fmt_hours(h: float | None) -> str:
    if h is None:
        return "-"
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:,.1f} d"


def fmt_usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def fmt_signed(n: int, unit: Unit) -> str:
    return ("+" if n >= 0 else "") + fmt_bytes(n, unit)


def fmt_limit(n: int | None, bound: int) -> str:
    if n is None:
        return "none"
    return f"≥{n:,}" if n >= bound else f"{n:,}"
