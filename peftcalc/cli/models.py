"""`peftcalc models`: the model catalogue."""

from __future__ import annotations

import json

import click

from peftcalc.cli.options import format_options
from peftcalc.render.text import table, to_csv


@click.command("models")
@format_options
def models_cmd(as_json: bool, as_csv: bool) -> None:
    """The model catalogue: exact parameter counts, shapes and sources.

    \b
    Example:
      peftcalc models
    """
    from peftcalc.model.catalogue import entry, get_model, model_names

    header = ["name", "family", "params", "hidden", "layers", "heads", "kv_heads", "vocab", "tied", "hf_id", "source"]
    rows = []
    for name in model_names():
        s = get_model(name)
        a = s.arch
        rows.append([name, a.family, s.total_params, a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads,
                     a.vocab_size, a.tie_embeddings, entry(name).get("hf_id", ""), s.source])
    if as_json:
        click.echo(json.dumps([dict(zip(header, r)) for r in rows], indent=2))
    elif as_csv:
        click.echo(to_csv(header, rows), nl=False)
    else:
        click.echo(table(header[:-1], [[r[0], r[1], f"{r[2]:,}", *map(str, r[3:9]), r[9]] for r in rows], align_left=2))
