"""`peftcalc estimate`: the seed document's comparison table, for any model."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import (apply_from, from_options, method_options, model_options, one_method_option,
                                  output_options, resolve_method_options, resolve_overhead, resolve_setup,
                                  resolve_spec, resolve_unit, setup_options, tasks_option)
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import estimate
from peftcalc.methods import DEFAULT_TABLE
from peftcalc.configs.apply import check_shape
from peftcalc.render.estimate import estimate_csv
from peftcalc.render.results import EstimateResult
from peftcalc.uncertainty import bands


@click.command("estimate")
@from_options
@model_options
@one_method_option
@method_options
@setup_options
@tasks_option
@output_options
@click.pass_context
def estimate_cmd(ctx: click.Context, **kw: Any) -> None:
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
      peftcalc estimate --from examples/llama-3/qlora.yml --model llama-3-8b     # an axolotl config
      peftcalc estimate --from sft.yaml --from accelerate_zero3.yaml --batch 2  # TRL + its launcher
    """
    unit = resolve_unit(kw)
    result = estimate_result(ctx, kw)
    if kw["as_csv"]:
        click.echo(estimate_csv(result.estimate), nl=False)
    elif kw["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.text(unit.value))


def estimate_result(ctx: click.Context, kw: dict[str, Any]) -> EstimateResult:
    """The estimate the parsed options ask for (the CLI's and the Python API's one path)."""
    if kw["tasks"] <= 0:
        raise PeftcalcError(f"--tasks must be a positive integer, got {kw['tasks']}")
    files = apply_from(ctx, kw)
    spec = resolve_spec(kw)
    if files is not None:
        check_shape(files, spec)
    methods = (kw["method"],) if kw["method"] else DEFAULT_TABLE
    est = estimate(spec, resolve_setup(kw), methods, resolve_method_options(kw), kw["tasks"],
                   overhead=resolve_overhead(kw))
    return EstimateResult(est, bands(est), files)
