"""`peftcalc check`: a pre-flight verdict on training configs, for CI: exit 0 fits with the margin, 1 does not,
2 bad input."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import (gpu_file_option, json_option, method_options, model_options, one_method_option,
                                  planning_setup_options, resolve_method_options, resolve_setup, resolve_spec,
                                  units_option)
from peftcalc.errors import PeftcalcError
from peftcalc.units import Unit

FITS, DOES_NOT_FIT, BAD_INPUT = 0, 1, 2


@click.command("check")
@click.argument("files", nargs=-1, required=True)
@click.option("--gpu", "gpu_id", required=True, metavar="ID", help="The GPU to check against (see `peftcalc gpus`).")
@click.option("--margin", default="10%", show_default=True,
              help="Memory to keep free: a share of the GPU's usable memory (10%) or a size (2GB).")
@click.option("--launcher", "launchers", multiple=True, metavar="FILE",
              help="A DeepSpeed or accelerate file read with every FILE (repeatable).")
@click.option("--from-kind", type=click.Choice(["axolotl", "trl", "torchtune", "llamafactory", "peft"]),
              help="The kind of every FILE (default: detected).")
@click.option("--max-gpus", type=int, default=8, show_default=True,
              help="Most GPUs of this type the suggested change may use.")
@gpu_file_option
@model_options
@one_method_option
@method_options
@planning_setup_options
@units_option
@json_option
@click.pass_context
def check_cmd(ctx: click.Context, files: tuple[str, ...], **kw: Any) -> None:
    """Does each training config FILE fit the GPU with the margin kept free? Exit status 0 when every FILE fits,
    1 when one does not (with the change that makes it fit), 2 on bad input (a file that cannot be read, an
    unknown GPU or model, contradictory fields). Flags given override the files, as for `estimate --from`.

    \b
    Examples:
      peftcalc check configs/qlora.yml --gpu a100-80gb
      peftcalc check train.yaml --launcher accelerate_fsdp.yaml --gpu h100-80gb --gpus 8 --margin 5%
      peftcalc check adapter_config.json --model llama-3.1-8b --gpu rtx-4090 --seq 2048 --batch 4 --json
    """
    from peftcalc.preflight import Margin

    unit = Unit(kw["units"])
    try:
        margin = Margin.parse(kw["margin"])
        gpu = _gpu(kw)
    except PeftcalcError as e:
        click.echo(f"Error: {e}", err=True)
        ctx.exit(BAD_INPUT)
    outcomes = [_check_one(ctx, path, dict(kw), gpu, margin) for path in files]
    if kw["as_json"]:
        click.echo(json.dumps([_outcome_dict(o) for o in outcomes], indent=2))
    else:
        for o in outcomes:
            click.echo(_outcome_text(o, unit), err=isinstance(o, tuple))
    codes = [BAD_INPUT if isinstance(o, tuple) else FITS if o.fits else DOES_NOT_FIT for o in outcomes]
    ctx.exit(BAD_INPUT if BAD_INPUT in codes else max(codes))


def _gpu(kw: dict[str, Any]) -> Any:
    from peftcalc.hardware.catalogue import catalogue_with, get_gpu

    return get_gpu(kw["gpu_id"], catalogue_with(kw["gpu_files"]))


def _check_one(ctx: click.Context, path: str, kw: dict[str, Any], gpu: Any, margin: Any) -> Any:
    """The CheckResult of one file, or (path, error message) when it cannot be checked."""
    from click.core import ParameterSource

    from peftcalc.configs import read_config
    from peftcalc.configs.apply import check_shape, merge
    from peftcalc.preflight import check

    given = {p.name for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name) is
             ParameterSource.COMMANDLINE}
    try:
        configs = [read_config(path, kw["from_kind"])] + [read_config(f) for f in kw["launchers"]]
        files = merge(kw, given, configs)
        spec = resolve_spec(kw)
        check_shape(files, spec)
        if not kw["method"]:
            raise PeftcalcError(f"{path} names no method; give --method")
        return check(spec, kw["method"], resolve_method_options(kw), resolve_setup(kw), gpu, margin,
                     kw["max_gpus"], path)
    except PeftcalcError as e:
        return (path, str(e))


def _outcome_text(o: Any, unit: Unit) -> str:
    if isinstance(o, tuple):
        return f"ERROR  {o[1] if o[1].startswith(o[0]) else o[0] + ': ' + o[1]}"
    b = lambda n: f"{n / unit.bytes:,.2f} {unit.value}"  # noqa: E731
    m, s = o.memory, o.setup
    where = f"{o.method} on {o.model}, {s.num_gpus} x {o.gpu.id}"
    budget = f"{b(o.usable_bytes)} usable less the {o.margin.text(unit)} margin = {b(o.budget_bytes)}"
    if o.fits:
        head = f"FITS  {o.label}: {where}: peak {b(m.total)} per GPU within {budget} ({b(o.budget_bytes - m.total)} " \
               "to spare)"
    else:
        head = f"DOES NOT FIT  {o.label}: {where}: peak {b(m.total)} per GPU, over {budget} by " \
               f"{b(m.total - o.budget_bytes)}"
    part, size = o.largest_part
    lines = [head, f"  peak: {b(m.total)} = tensors {b(m.peak_bytes)} (in {m.peak_phase}) + CUDA overhead "
             f"{b(m.overhead_bytes)}", f"  largest part: {part} {b(size)}"]
    if not o.fits:
        lines.append(f"  to fit: {' + '.join(o.change.changes)} ({b(o.change.total_bytes)} per GPU)" if o.change else
                     "  to fit: no change peftcalc tries fits (a smaller batch, gradient checkpointing, adamw-8bit, "
                     "optimizer offload, more GPUs up to --max-gpus)")
    return "\n".join(lines)


def _outcome_dict(o: Any) -> dict[str, Any]:
    if isinstance(o, tuple):
        return {"file": o[0], "status": "error", "error": o[1]}
    m = o.memory
    part, size = o.largest_part
    return {"file": o.label, "status": "fits" if o.fits else "does not fit", "model": o.model, "method": o.method,
            "gpu": o.gpu.id, "num_gpus": o.setup.num_gpus, "peak_bytes": m.total, "tensor_peak_bytes": m.peak_bytes,
            "peak_phase": m.peak_phase, "usable_bytes": o.usable_bytes, "budget_bytes": o.budget_bytes,
            "largest_part": {"name": part, "bytes": size},
            "change": None if o.change is None else {"changes": list(o.change.changes),
                                                     "peak_bytes": o.change.total_bytes}}
