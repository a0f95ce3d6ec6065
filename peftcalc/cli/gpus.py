"""`peftcalc gpus`: the GPU catalogue, with its sources and prices."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from peftcalc.cli.options import gpu_file_option, output_options
from peftcalc.units import GB, Unit

TERA = 10**12


@click.command("gpus")
@gpu_file_option
@output_options
def gpus_cmd(gpu_files: tuple[str, ...], units: str, as_json: bool, as_csv: bool) -> None:
    """The GPU catalogue: usable memory, dense peak TFLOPS, bandwidth, rent and purchase prices, sources.

    Prices are typical figures with their month; the matmul rate is what the planner's time model uses (measured
    where a public measurement exists, see --json's matmul_source; `peftcalc plan --mfu` replaces the model).

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
    from peftcalc.hardware.rates import rates_for
    from peftcalc.hardware.nodes import node_for
    from peftcalc.render.text import fmt_bytes, table, to_csv

    if as_json and as_csv:
        raise PeftcalcError("--json and --csv are exclusive: choose one")
    unit = Unit(units)
    gpus = sorted(catalogue_with(gpu_files).values(), key=lambda g: g.id)
    def matmul(g: Any) -> float | None:
        rates = rates_for(g, "bf16" if g.bf16_flops_per_s else "fp16" if g.fp16_flops_per_s else "fp32")
        return None if rates is None else round(rates.matmul_flops_per_s)

    if as_json:
        click.echo(json.dumps([{**asdict(g), "matmul_flops_per_s": matmul(g)} for g in gpus], indent=2))
        return
    if as_csv:
        header = [*asdict(gpus[0]).keys(), "matmul_flops_per_s"]
        click.echo(to_csv(header, [[*asdict(g).values(), matmul(g)] for g in gpus]), nl=False)
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
                     f"{g.memory_bandwidth_bytes_per_s / GB:,.0f} GB/s", tflops(matmul(g)), rent, buy,
                     node_for(g).id])
    out = [table(["id", "name", "memory", "usable", "bf16 TF", "fp16 TF", "fp32 TF", "bandwidth", "matmul TF*", "rent",
                  "buy", "node"], rows, align_left=2)]
    out += ["", "TF = dense TFLOPS (no sparsity), tensor cores where the GPU has them; '-' = not available.",
            "* achievable matmul rate (bf16, else fp16) the planner's time model uses: measured where a public "
            "measurement exists (--json: matmul_source), else the peak x 0.803 (peftcalc/hardware/rates.py).",
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
