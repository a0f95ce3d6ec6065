"""`peftcalc estimate`: the seed document's comparison table, for any model."""

from __future__ import annotations

from typing import Any

import click

from peftcalc.cli.options import (method_options, model_options, one_method_option, output_options,
                                  resolve_method_options, resolve_overhead, resolve_setup, resolve_spec, resolve_unit,
                                  setup_options, tasks_option)
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import estimate
from peftcalc.methods import DEFAULT_TABLE
from peftcalc.render.estimate import estimate_csv, estimate_json, estimate_text
from peftcalc.uncertainty import bands


@click.command("estimate")
@model_options
@one_method_option
@method_options
@setup_options
@tasks_option
@output_options
def estimate_cmd(**kw: Any) -> None:
    """Parameters, memory and storage of fine-tuning a model with each method.

    \b
    Examples:
      peftcalc estimate --params 7e9 --rank 8
      peftcalc estimate --model llama-2-7b --method lora --rank 16 --targets all-linear \\
          --precision bf16-mixed --seq 2048 --batch 4
      peftcalc estimate --config ./my-model/config.json --method qlora --rank 64 --json
      peftcalc estimate --model llama-2-7b --method qlora --targets q_proj,v_proj --precision bf16 \
          --seq 1304 --no-kbit-preparation --bitsandbytes-version 0.41.1
      peftcalc estimate --model mistral-7b --method lora --adamw-impl fused --overhead context=600MiB
    """
    unit = resolve_unit(kw)
    if kw["tasks"] <= 0:
        raise PeftcalcError(f"--tasks must be a positive integer, got {kw['tasks']}")
    spec = resolve_spec(kw)
    methods = (kw["method"],) if kw["method"] else DEFAULT_TABLE
    est = estimate(spec, resolve_setup(kw), methods, resolve_method_options(kw), kw["tasks"],
                   overhead=resolve_overhead(kw))
    if kw["as_csv"]:
        click.echo(estimate_csv(est), nl=False)
    elif kw["as_json"]:
        click.echo(estimate_json(est, bands(est)))
    else:
        click.echo(estimate_text(est, unit, bands(est)))
