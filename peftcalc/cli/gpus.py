"""`peftcalc gpus`: the GPU catalogue, with its sources and prices."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from peftcalc.cli.options import gpu_file_option, output_options
from peftcalc.units import GB, Unit

TERA = 10**12


@click.command("gpus")
@gpu_file_option
@output_options
def gpus_cmd(gpu_files: tuple[str, ...], units: str, as_json: bool, as_csv: bool) -> None:
    """The GPU catalogue: usable memory, dense peak TFLOPS, bandwidth, rent and purchase prices, sources.

    Prices are typical figures with their month; the planner's default MFU per GPU is an assumption
    (override it with `peftcalc plan --mfu`).

    \b
    Examples:
      peftcalc gpus
      peftcalc gpus --json
      peftcalc gpus --gpu-file my-gpus.json --units GiB
      peftcalc nodes
    """
    from peftcalc.errors import PeftcalcError
    from peftcalc.hardware.catalogue import catalogue_with
    from peftcalc.hardware.catalogue import PRICE_WINDOW
    from peftcalc.hardware.mfu import default_mfu
    from peftcalc.hardware.nodes import node_for
    from peftcalc.render.text import fmt_bytes, table, to_csv

    if as_json and as_csv:
        raise PeftcalcError("--json and --csv are exclusive: choose one")
    unit = Unit(units)
    gpus = sorted(catalogue_with(gpu_files).values(), key=lambda g: g.id)
    if as_json:
        click.echo(json.dumps([{**asdict(g), "default_mfu": default_mfu(g).value} for g in gpus], indent=2))
        return
    if as_csv:
        header = [*asdict(gpus[0]).keys(), "default_mfu"]
        click.echo(to_csv(header, [[*asdict(g).values(), default_mfu(g).value] for g in gpus]), nl=False)
        return

    def tflops(v: int | None) -> str:
        return "-" if v is None else f"{v / TERA:,.1f}"

    def dated(text: str, date: str | None) -> str:
        if date is None:
            return text
        return f"{text} ({date}{'' if date >= PRICE_WINDOW[0] else ', old'})"

    rows = []
    for g in gpus:
        rent = "-" if g.rent_usd_per_hour is None else dated(f"${g.rent_usd_per_hour:,.2f}/h", g.rent_date)
        buy = "-" if g.purchase_usd is None else dated(f"${g.purchase_usd:,}", g.purchase_date)
        rows.append([g.id, g.name, fmt_bytes(g.memory_bytes, unit), fmt_bytes(g.usable_memory_bytes, unit),
                     tflops(g.bf16_flops_per_s), tflops(g.fp16_flops_per_s), tflops(g.fp32_flops_per_s),
                     f"{g.memory_bandwidth_bytes_per_s / GB:,.0f} GB/s", f"{default_mfu(g).value:.0%}", rent, buy,
                     node_for(g).id])
    out = [table(["id", "name", "memory", "usable", "bf16 TF", "fp16 TF", "fp32 TF", "bandwidth", "MFU*", "rent",
                  "buy", "node"], rows, align_left=2)]
    out += ["", "TF = dense TFLOPS (no sparsity), tensor cores where the GPU has them; '-' = not available.",
            "* default MFU the planner assumes for full fine-tuning (`peftcalc plan --mfu` overrides it).",
            "Usable memory: what a training process can allocate (capacity minus ECC/driver reserve; per-GPU notes "
            "in --json).",
            f"Prices are dated; 'old' marks a month before {PRICE_WINDOW[0]} (the catalogue was brought to "
            f"{PRICE_WINDOW[0]}..{PRICE_WINDOW[1]}; where nothing in that window was found the source says so).",
            "node: the server type `peftcalc plan` counts this GPU in (`peftcalc nodes`; '-generic' = assumed).",
            "", "Sources"]
    for g in gpus:
        out.append(f"  {g.id}: datasheet {g.source or '-'}")
        out.append(f"    rent: {g.rent_source or '-'}")
        out.append(f"    purchase: {g.purchase_source or '-'}")
    out.append(f"  ({unit.value} = {unit.bytes:,} bytes)")
    click.echo("\n".join(out))
