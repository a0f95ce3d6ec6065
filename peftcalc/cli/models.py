"""`peftcalc models`: the model catalogue, or one model's weight inventory."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import format_options
from peftcalc.render.text import table, to_csv


@click.command("models")
@click.option("--model", "model_name", metavar="NAME", help="Show this model's inventory (a catalogue name or a "
                                                            "Hugging Face id).")
@click.option("--config", "config_path", type=click.Path(dir_okay=True), help="Show the inventory of a config.json.")
@click.option("--full-model", is_flag=True, help="Multimodal checkpoints: every tower (default: the language model).")
@format_options
def models_cmd(model_name: str | None, config_path: str | None, full_model: bool, as_json: bool, as_csv: bool) -> None:
    """The model catalogue: exact parameter counts, shapes and sources; with --model or --config, one model's
    inventory (every weight template: shape, layers, dtype rule), as transformers builds it.

    \b
    Examples:
      peftcalc models
      peftcalc models --model qwen3-30b-a3b
      peftcalc models --config ./my-model/config.json --json
    """
    if model_name is not None or config_path is not None:
        _one(model_name, config_path, full_model, as_json, as_csv)
        return
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


def _one(model_name: str | None, config_path: str | None, full_model: bool, as_json: bool, as_csv: bool) -> None:
    from peftcalc.cli.options import resolve_spec
    from peftcalc.render.inventory import (
        HEADER,
        inventory_rows,
        inventory_text,
        origin_line,
    )

    kw: dict[str, Any] = {"model_name": model_name, "config_path": config_path, "full_model": full_model}
    spec = resolve_spec(kw)
    if as_json:
        click.echo(json.dumps({"name": spec.name, "family": spec.family, "total_params": spec.total_params,
                               "source": spec.source, "origin": spec.origin, "inventory": origin_line(spec),
                               "tensors": [dict(zip(HEADER, r)) for r in inventory_rows(spec)]}, indent=2))
    elif as_csv:
        click.echo(to_csv(HEADER, inventory_rows(spec)), nl=False)
    else:
        click.echo(inventory_text(spec))
