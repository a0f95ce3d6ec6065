"""`peftcalc plan`: which GPUs, how many, for how long, for how much, and whether to buy or rent."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import (method_options, methods_option, model_options, output_options, planning_options,
                                  planning_setup_options, resolve_gpus, resolve_method_options, resolve_setup,
                                  resolve_spec, resolve_unit)
from peftcalc.errors import PeftcalcError


@click.command("plan")
@model_options
@methods_option
@method_options
@planning_setup_options
@planning_options
@output_options
def plan_cmd(**kw: Any) -> None:
    """Which GPUs fit each method, how many, how long the run takes, what it costs to rent or buy.

    For every method x GPU: a fit verdict at the setup asked (or the changes it needs), the margin and the
    largest part of the peak, the largest batch and longest sequence that fit, the fewest GPUs with DDP,
    ZeRO 1/2/3 (FSDP) and CPU offload, time at an assumed MFU, rent, purchase and break-even runs; then a
    shortlist (cheapest, fastest, fewest GPUs) and the assumptions it rests on.

    \b
    Examples:
      peftcalc plan --model llama-3.1-70b --method qlora --rank 16 --tokens 50e6 --epochs 3
      peftcalc plan --params 7e9 --gpu rtx-4090 --gpu a100-80gb --gpu h100-80gb --json
      peftcalc plan --model mistral-7b --method full --gpu h100-80gb --max-gpus 8 --precision bf16-mixed
      peftcalc plan --model llama-2-7b --precision bf16-mixed --seq 4096 --gpu-file my-gpus.json --csv
    """
    from peftcalc.hardware.planner import PlanRequest, plan, plan_methods
    from peftcalc.render.plan import plan_csv, plan_dict, plan_text

    unit = resolve_unit(kw)
    gpus = resolve_gpus(kw)
    spec = resolve_spec(kw)
    request = PlanRequest(spec=spec, setup=resolve_setup(kw), gpus=gpus, methods=plan_methods(kw["methods"]),
                          options=resolve_method_options(kw), max_gpus=kw["max_gpus"], tokens=kw["tokens"],
                          epochs=kw["epochs"], mfu=kw["mfu"])
    result = plan(request)
    if kw["as_json"]:
        click.echo(json.dumps(plan_dict(result), indent=2))
    elif kw["as_csv"]:
        click.echo(plan_csv(result), nl=False)
    else:
        click.echo(plan_text(result, unit))
    if not any(o.runs for o in result.options):
        closest = max(result.options, key=lambda o: o.margin_bytes)
        raise PeftcalcError(
            f"nothing fits: {spec.name} on {', '.join(g.id for g in gpus)} up to --max-gpus {request.max_gpus}, even "
            f"with batch 1, gradient checkpointing, adamw-8bit and offload; closest: {closest.method} on "
            f"{closest.num_gpus} x {closest.gpu.id} ({closest.strategy}), short by "
            f"{-closest.margin_bytes / unit.bytes:,.2f} {unit.value} per GPU at the setup asked")
