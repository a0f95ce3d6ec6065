"""`peftcalc methods`: the fine-tuning methods, their options and sources."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import format_options
from peftcalc.render.text import table, to_csv


@click.command("methods")
@format_options
def methods_cmd(as_json: bool, as_csv: bool) -> None:
    """The fine-tuning methods, their options and sources.

    \b
    Example:
      peftcalc methods
    """
    from peftcalc.methods import METHODS

    header = ["name", "title", "options", "counts_checked_against", "source"]
    rows: list[list[Any]] = [[m.name, m.title, " ".join(m.options), m.checked_against, m.source]
                             for m in METHODS.values()]
    if as_json:
        click.echo(json.dumps([dict(zip(header, r)) for r in rows], indent=2))
    elif as_csv:
        click.echo(to_csv(header, rows), nl=False)
    else:
        click.echo(table(["name", "title", "options", "counts checked against", "source"],
                         [[r[0], r[1], r[2] or "-", r[3], r[4]] for r in rows], align_left=5))
