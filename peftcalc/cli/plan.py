"""`peftcalc plan`: which GPUs, how many, for how long, for how much, and whether to buy or rent."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.nodes import node_file_option
from peftcalc.cli.options import (apply_from, from_options, method_options, methods_option, model_options,
                                  output_options, planning_options, planning_setup_options, resolve_gpus,
                                  resolve_method_options, resolve_setup, resolve_spec, resolve_unit)
from peftcalc.errors import PeftcalcError

node_option = click.option("--node", "node_ids", multiple=True, metavar="ID",
                           help="The server type a GPU sits in (repeatable, one per GPU; default: the catalogue's "
                                "node for each GPU, see `peftcalc nodes`).")


@click.command("plan")
@from_options
@model_options
@methods_option
@method_options
@planning_setup_options
@planning_options
@node_option
@node_file_option
@output_options
@click.pass_context
def plan_cmd(ctx: click.Context, **kw: Any) -> None:
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
      peftcalc plan --model llama-3.1-405b --method full --gpu h100-80gb --max-gpus 512 --seq 4096 --json
      peftcalc plan --model llama-3.1-70b --method full --gpu gb200 --node gb200-compute-tray
      peftcalc plan --from examples/llama-3/qlora.yml --model llama-3-8b --gpu a100-80gb --tokens 20e6
    """
    from peftcalc.render.plan import plan_csv

    unit = resolve_unit(kw)
    result = plan_result(ctx, kw)
    if kw["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif kw["as_csv"]:
        click.echo(plan_csv(result.plan), nl=False)
    else:
        click.echo(result.text(unit.value))
    _nothing_fits(result.plan, unit)


def plan_result(ctx: click.Context, kw: dict[str, Any]) -> Any:
    """The plan the parsed options ask for, as a render.results.PlanResult (the CLI's and the API's one path)."""
    from peftcalc.configs.apply import check_shape
    from peftcalc.hardware.planner import PlanRequest, plan, plan_methods
    from peftcalc.render.results import PlanResult

    files = apply_from(ctx, kw, methods_key="methods")
    gpus = resolve_gpus(kw)
    spec = resolve_spec(kw)
    if files is not None:
        check_shape(files, spec)
    setup = resolve_setup(kw)
    max_gpus = kw["max_gpus"]
    if files is not None and "max_gpus" not in _given(ctx):  # a file's GPU count raises the default bound
        max_gpus = max(max_gpus, setup.gpus)
    catalogue, chosen = resolve_nodes(kw, gpus)
    request = PlanRequest(spec=spec, setup=setup, gpus=gpus, methods=plan_methods(kw["methods"]),
                          options=resolve_method_options(kw), max_gpus=max_gpus, tokens=kw["tokens"],
                          epochs=kw["epochs"], mfu=kw["mfu"], steps=kw["steps"], nodes=chosen,
                          node_catalogue=catalogue)
    return PlanResult(plan(request), files)


def _given(ctx: click.Context) -> set[str]:
    from click.core import ParameterSource

    return {p.name for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name) is
            ParameterSource.COMMANDLINE}


def _nothing_fits(result: Any, unit: Any) -> None:
    request, spec, gpus = result.request, result.request.spec, result.request.gpus
    if not any(o.runs for o in result.options):
        closest = max(result.options, key=lambda o: o.margin_bytes)
        raise PeftcalcError(
            f"nothing fits: {spec.name} on {', '.join(g.id for g in gpus)} up to --max-gpus {request.max_gpus}, even "
            f"with batch 1, gradient checkpointing, adamw-8bit and offload; closest: {closest.method} on "
            f"{closest.num_gpus} x {closest.gpu.id} ({closest.strategy}), short by "
            f"{-closest.margin_bytes / unit.bytes:,.2f} {unit.value} per GPU at the setup asked")


def resolve_nodes(kw: dict[str, Any], gpus: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The node catalogue (built-in plus --node-file) and the nodes --node chose (one per GPU planned)."""
    from peftcalc.hardware.catalogue import catalogue_with
    from peftcalc.hardware.nodes import check_gpus_known, get_node, node_catalogue_with

    nodes = node_catalogue_with(kw["node_files"])
    check_gpus_known(nodes, catalogue_with(kw["gpu_files"]))
    chosen = tuple(get_node(n, nodes) for n in kw["node_ids"])
    planned = {g.id for g in gpus}
    for node in chosen:
        if node.gpu not in planned:
            raise PeftcalcError(f"--node {node.id} holds {node.gpu}, which is not among the GPUs planned "
                                f"({', '.join(sorted(planned))}): add --gpu {node.gpu}")
    if len({n.gpu for n in chosen}) != len(chosen):
        raise PeftcalcError("--node names two node types for the same GPU: give one per GPU")
    return tuple(nodes.values()) if kw["node_files"] else (), chosen
