"""`peftcalc methods`: the fine-tuning methods, their options and sources."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import format_options
from peftcalc.render.text import table, to_csv

PEFT_CHECK = "peft (applied to the real model: tests/methods/test_peft_derived.py)"


@click.command("methods")
@format_options
def methods_cmd(as_json: bool, as_csv: bool) -> None:
    """The fine-tuning methods, their options and sources: peftcalc's own (formulas over the inventory) and every
    other peft tuner, by peft's name, read off peft's real model (the measure extra the first time, then cached).

    \b
    Example:
      peftcalc methods
    """
    from peftcalc.methods import METHODS
    from peftcalc.methods.peft_catalogue import ALIASES, PEFT_METHODS, REFUSED

    header = ["name", "kind", "title", "options", "counts_checked_against", "source"]
    rows: list[list[Any]] = [[m.name, "peftcalc", m.title, " ".join(m.options), m.checked_against, m.source]
                             for m in METHODS.values()]
    rows += [[p.name, "peft", p.title, "--rank --targets --peft-option K=V"
              + (f" (needs {', '.join(p.required)})" if p.required else ""), PEFT_CHECK, p.source]
             for p in PEFT_METHODS.values()]
    if as_json:
        extra = [{"name": a, "kind": "alias", "title": f"peft's name for {m}"} for a, m in ALIASES.items()]
        extra += [{"name": n, "kind": "refused", "title": why} for n, why in REFUSED.items()]
        click.echo(json.dumps([dict(zip(header, r)) for r in rows] + extra, indent=2))
        return
    if as_csv:
        click.echo(to_csv(header, rows), nl=False)
        return
    click.echo(table(["name", "kind", "title", "options", "counts checked against", "source"],
                     [[r[0], r[1], r[2], r[3] or "-", r[4], r[5]] for r in rows], align_left=6))
    click.echo("\n--rank sets peft's `r` where the method has one; --peft-option sets any field of its peft config.")
    click.echo("peft's names for peftcalc's own methods: " + ", ".join(f"{a} = {m}" for a, m in ALIASES.items()))
    click.echo("peft tuners that cannot be sized from a config:")
    for name, why in REFUSED.items():
        click.echo(f"  {name}: {why}")
