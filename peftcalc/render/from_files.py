"""The "from FILE" section: each field of each --from file, what it became, or why it was not used."""

from __future__ import annotations

import textwrap
from typing import Any

from peftcalc.configs.apply import FromFiles
from peftcalc.configs.result import FieldUse, Status, TrainingConfig

HEADINGS = {Status.USED: "used", Status.DEFAULT: "framework defaults (not in the file, differ from peftcalc's)",
            Status.NOT_MODELLED: "read, not modelled (the estimate leaves their effect out)"}
WIDTH = 116


def from_text(files: FromFiles) -> str:
    out: list[str] = []
    for c in files.configs:
        out += _config_lines(c)
    if files.notes:
        out.append("  warnings:")
        out += [textwrap.fill(n, WIDTH, initial_indent="    - ", subsequent_indent="      ") for n in files.notes]
    return "\n".join(out)


def _config_lines(c: TrainingConfig) -> list[str]:
    out = [f"From {c.path} ({c.kind})" + (f", with {', '.join(c.companions)}" if c.companions else "")]
    for status, heading in HEADINGS.items():
        uses = c.by_status(status)
        if uses:
            out.append(f"  {heading}:")
            out += [_line(u) for u in uses]
    ignored: dict[str, list[str]] = {}
    for u in c.by_status(Status.IGNORED):
        ignored.setdefault(u.detail, []).append(u.field)
    grouped = {d: names for d, names in ignored.items() if len(names) > 1 or d in ("off", "false")}
    for detail, names in grouped.items():
        out.append(textwrap.fill(f"ignored ({detail}): {', '.join(names)}", WIDTH, initial_indent="  ",
                                 subsequent_indent="    "))
    single = [u for u in c.by_status(Status.IGNORED) if u.detail not in grouped]
    if single:
        out.append("  ignored:")
        out += [_line(u) for u in single]
    unknown = c.by_status(Status.UNKNOWN)
    if unknown:
        out.append(textwrap.fill("not understood (not a field peftcalc knows for this kind; not used): " +
                                 ", ".join(u.field for u in unknown), WIDTH, initial_indent="  ",
                                 subsequent_indent="    "))
    return out


def _line(u: FieldUse) -> str:
    head = f"    {u.field}: {u.value}"
    return textwrap.fill(f"{head} -> {u.detail}", WIDTH, subsequent_indent="        ")


def from_dict(files: FromFiles) -> dict[str, Any]:
    return files.to_dict()


def not_modelled_summary(files: FromFiles) -> str | None:
    """One assumption line naming the fields read but not modelled."""
    names = [u.field for c in files.configs for u in c.fields
             if u.status is Status.NOT_MODELLED or "not modelled yet" in u.detail]
    if not names:
        return None
    return (f"{len(names)} field(s) of the --from files are read but not modelled, so their effect is not in these "
            f"numbers: {', '.join(names)} (see the from-file section)")
