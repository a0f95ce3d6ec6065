"""`peftcalc plan`: which GPUs, how many, for how long, for how much, and whether to buy or rent."""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli import main
from peftcalc.cli.options import (METHOD_NAMES, Count, method_options, model_options, output_options,
                                  planning_setup_options, resolve_method_options, resolve_setup, resolve_spec, resolve_unit)
from peftcalc.errors import PeftcalcError
from peftcalc.units import Unit

DEFAULT_TOKENS = 100_000_000


@main.command("plan")
@model_options
@click.option("--method", "methods", multiple=True, type=click.Choice(METHOD_NAMES),
              help="A method to plan (repeatable; default: every method).")
@method_options
@planning_setup_options
@click.option("--gpu", "gpu_ids", multiple=True, metavar="ID",
              help="A GPU to consider (repeatable; default: the whole catalogue, see `peftcalc gpus`).")
@click.option("--gpu-file", "gpu_files", multiple=True, metavar="PATH",
              help="A JSON file of GPUs (one object or a list) that adds to or overrides the catalogue (repeatable).")
@click.option("--max-gpus", type=int, default=8, show_default=True,
              help="Most GPUs of one type to scale out to (DDP, ZeRO 1/2/3, offload).")
@click.option("--tokens", type=Count(), default=str(DEFAULT_TOKENS), show_default=True,
              help="Training tokens per epoch, e.g. 50e6.")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over --tokens (may be fractional).")
@click.option("--mfu", type=float, default=None,
              help="Model FLOPs utilisation in (0, 1] for every GPU and method (default: per GPU family, see assumptions).")
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
    from peftcalc.hardware.catalogue import all_gpus, catalogue_with, get_gpu
    from peftcalc.hardware.planner import PlanRequest, plan, plan_methods

    unit = resolve_unit(kw)
    catalogue = catalogue_with(kw["gpu_files"])
    if kw["gpu_ids"]:
        gpus = tuple(dict.fromkeys(get_gpu(g, catalogue) for g in kw["gpu_ids"]))
    else:
        builtin = {g.id for g in all_gpus()}
        gpus = tuple(sorted(catalogue.values(), key=lambda g: (g.id in builtin, g.id)))  # user entries first
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


# ---- rendering -----------------------------------------------------------------------------------------

def fmt_hours(h: float | None) -> str:
    if h is None:
        return "-"
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:,.1f} d"


def fmt_usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def fmt_signed(n: int, unit: Unit) -> str:
    from peftcalc.render import fmt_bytes

    return ("+" if n >= 0 else "") + fmt_bytes(n, unit)


def fmt_limit(n: int | None, bound: int) -> str:
    if n is None:
        return "none"
    return f"≥{n:,}" if n >= bound else f"{n:,}"


def verdict_text(o: Any) -> str:
    if o.remedies:
        parts = [f"batch {o.run_setup.batch_size}" if r == "smaller batch" else r for r in o.remedies]
        return "fits with " + " + ".join(parts)
    return o.verdict.value


def plan_assumptions(p: Any) -> dict[str, str]:
    """What every number of the plan rests on: the estimate's assumptions plus the planner's."""
    from peftcalc.estimate import Estimate
    from peftcalc.hardware.mfu import mfu_for
    from peftcalc.hardware.planner import GPUS_PER_NODE, MAX_BATCH_SIZE, MAX_SEQ_LEN, STRATEGIES
    from peftcalc.render import assumptions

    r = p.request
    out = assumptions(Estimate(r.spec, r.setup, r.options, ()))
    out.pop("checkpoints", None)
    out["training"] = (f"{r.tokens:,} tokens per epoch x {r.epochs:g} epoch(s) = {round(r.tokens * r.epochs):,} "
                       f"tokens (--tokens, --epochs)")
    out["FLOPs"] = ("full fine-tuning 6N + 12·L·H·Q·T per token (Kaplan et al. 2020 arXiv:2001.08361 C≈6N; "
                    "PaLM appendix B, Chowdhery et al. 2022 arXiv:2204.02311, the MFU convention); frozen-base "
                    "methods 4N + 12·L·H·Q·T + 6 x trainable params (no weight gradients for frozen weights); "
                    "gradient checkpointing adds one forward of the blocks; virtual tokens lengthen every sequence, "
                    "prefixes the keys; N = parameters in matmuls (embeddings excluded, active experts only); "
                    "QLoRA's dequantization is not counted as FLOPs but in its lower MFU (see peftcalc/compute.py)")
    if r.mfu is not None:
        out["MFU"] = f"{r.mfu:g} for every GPU and method (--mfu), applied to the FLOPs above, recomputation included"
    else:
        groups: dict[tuple[float, str], list[str]] = {}  # one line per assumption, not per GPU
        for gpu in r.gpus:
            m = mfu_for(gpu, "full", None)
            groups.setdefault((m.value, m.basis), []).append(gpu.id)
        lines = [f"{value:.0%} for {', '.join(ids)} ({basis})" for (value, basis), ids in groups.items()]
        if "qlora" in r.methods:
            q = mfu_for(r.gpus[0], "qlora", None)
            lines.append(f"qlora x{q.value / mfu_for(r.gpus[0], 'full', None).value:.2f}")
        out["MFU"] = ("ASSUMED defaults, override with --mfu; applied to the FLOPs above, recomputation included: "
                      + "; ".join(lines))
    out["time"] = ("FLOPs / (GPUs x dense peak FLOP/s of the compute dtype x MFU); perfect data-parallel scaling "
                   "(communication overlapped); no evaluation, checkpointing or start-up time")
    out["memory"] = ("a configuration fits when its peak per GPU (overhead included) is at most the GPU's usable "
                     "memory from the catalogue (capacity minus ECC/driver reserve; see `peftcalc gpus`)")
    out["fits with"] = ("the fewest changes that make it fit, preferring a smaller micro-batch (gradient accumulation "
                        "keeps the effective batch), then gradient checkpointing, adamw-8bit, optimizer offload "
                        "(ZeRO-Offload, stage >= 2); time, cost and limits then assume those changes")
    out["limits"] = (f"largest micro-batch searched up to {MAX_BATCH_SIZE:,} and longest sequence up to "
                     f"{MAX_SEQ_LEN:,} tokens (≥ marks the bound); the longest sequence is a memory limit only"
                     + (f": {r.spec.name} was trained with {r.spec.arch.max_positions:,} positions"
                        if r.spec.arch.max_positions and not r.spec.is_inferred else ""))
    out["scale-out"] = ("fewest GPUs up to --max-gpus " + str(r.max_gpus) + " for each of "
                        + ", ".join(s.name for s in STRATEGIES) + " (ZeRO-3 = FSDP full shard); options list a "
                        "strategy only when it needs fewer GPUs than those before it; CPU memory per node for "
                        f"{GPUS_PER_NODE} GPUs per node")
    out["prices"] = ("typical on-demand rent per GPU-hour and street purchase price per GPU (whole machine for "
                     "Apple), each dated and sourced in `peftcalc gpus`; host, power, networking and operations "
                     "excluded; break-even runs = purchase / rent of one run")
    if r.setup.precision == "fp32":
        out["precision note"] = ("--precision fp32 computes at the fp32 peak, far below tensor-core "
                                 "rates; most runs use --precision bf16-mixed")
    return out


def _option_dict(o: Any) -> dict[str, Any]:
    c = o.cost
    run = o.run_setup
    return {
        "gpu": o.gpu.id,
        "num_gpus": o.num_gpus,
        "method": o.method,
        "fits": o.fits,
        "per_gpu_bytes": o.per_gpu_bytes,
        "limiting_component": o.limiting_component,
        "max_batch_size": o.max_batch_size,
        "max_seq_len": o.max_seq_len,
        "hours": c.hours if c else None,
        "rent_usd": c.rent_usd if c else None,
        "purchase_usd": c.purchase_usd if c else None,
        "strategy": o.strategy,
        "zero_stage": o.zero_stage,
        "offload": o.offload,
        "kind": o.kind,
        "verdict": o.verdict.value,
        "fits_with": list(o.remedies) if o.remedies else None,
        "capacity_bytes": o.capacity_bytes,
        "margin_bytes": o.margin_bytes,
        "model_state_bytes": o.memory.model_state_bytes,
        "activation_bytes": o.memory.activation_bytes,
        "cpu_bytes_per_node": o.cpu_bytes_per_node,
        "run": None if run is None else {
            "batch_size": run.batch_size, "seq_len": run.seq_len, "gradient_checkpointing": run.gradient_checkpointing,
            "optimizer": run.optimizer, "zero_stage": run.zero_stage, "offload": run.offload,
            "per_gpu_bytes": o.run_memory.total},
        "flops_per_token": o.flops.flops_per_token,
        "run_flops": c.run_flops if c else None,
        "mfu": c.mfu.value if c else None,
        "break_even_runs": c.break_even_runs if c else None,
        "note": c.note if c else None,
    }


def _ref(o: Any) -> dict[str, Any]:
    return {"gpu": o.gpu.id, "num_gpus": o.num_gpus, "method": o.method, "strategy": o.strategy, "kind": o.kind,
            "fits_with": list(o.remedies) if o.remedies else None, "hours": o.hours, "rent_usd": o.rent_usd}


def plan_dict(p: Any) -> dict[str, Any]:
    """The JSON contract (issue 5): every option evaluated, fitting or not; nulls where not applicable."""
    return {
        "options": [_option_dict(o) for o in p.options],
        "scale_out": [{"gpu": s.gpu, "method": s.method, "strategy": s.strategy.name, "num_gpus": s.num_gpus,
                       "per_gpu_bytes": s.per_gpu_bytes, "cpu_bytes_per_node": s.cpu_bytes_per_node}
                      for s in p.scale_out],
        "shortlist": {k: [_ref(o) for o in v] for k, v in p.shortlist().items()},
        "assumptions": plan_assumptions(p),
    }


CSV_FIELDS = ("gpu", "num_gpus", "method", "strategy", "kind", "fits", "verdict", "fits_with", "per_gpu_bytes",
              "capacity_bytes", "margin_bytes", "limiting_component", "max_batch_size", "max_seq_len",
              "cpu_bytes_per_node", "flops_per_token", "mfu", "hours", "rent_usd", "purchase_usd", "break_even_runs")


def plan_csv(p: Any) -> str:
    from peftcalc.render import to_csv

    rows = []
    for o in p.options:
        d = _option_dict(o)
        d["fits_with"] = "+".join(d["fits_with"] or [])
        rows.append(["" if d[k] is None else d[k] for k in CSV_FIELDS])
    return to_csv(CSV_FIELDS, rows)


def plan_text(p: Any, unit: Unit) -> str:
    from peftcalc.hardware.planner import MAX_BATCH_SIZE, MAX_SEQ_LEN, STRATEGIES, Verdict
    from peftcalc.render import fmt_bytes, table

    r, s = p.request, p.request.setup
    out = [f"Plan: {r.spec.name} ({r.spec.total_params:,} params), {s.precision}, {s.optimizer}, micro-batch "
           f"{s.batch_size} x {s.seq_len} tokens, {r.tokens:,} tokens x {r.epochs:g} epoch(s), up to {r.max_gpus} GPUs",
           ""]
    rows = []
    for o in p.options:
        c = o.cost
        rows.append([o.gpu.id, str(o.num_gpus), o.strategy, o.method, verdict_text(o), fmt_bytes(o.per_gpu_bytes, unit),
                     fmt_signed(o.margin_bytes, unit), o.limiting_component, fmt_limit(o.max_batch_size, MAX_BATCH_SIZE),
                     fmt_limit(o.max_seq_len, MAX_SEQ_LEN), fmt_hours(c.hours if c else None),
                     fmt_usd(c.rent_usd if c else None), fmt_usd(c.purchase_usd if c else None)])
    out.append("Options (per GPU at the setup asked; limits, time and cost with the changes a verdict names)")
    out.append(table(["gpu", "GPUs", "strategy", "method", "verdict", "peak/GPU", "margin", "largest part",
                      "max batch", "max seq", "time", "rent", "buy"], rows, align_left=5))
    notes = sorted({f"{o.gpu.id}: {o.cost.note}" for o in p.options if o.cost and o.cost.note})
    if notes:
        out += [f"  {n}" for n in notes]

    # fewest GPUs per strategy, for the pairs that do not fit as asked
    pairs = [(o.gpu.id, o.method) for o in p.options if o.kind == "as asked" and o.verdict is not Verdict.FITS]
    if pairs:
        cells: dict[tuple[str, str, str], str] = {}
        for so in p.scale_out:
            if so.num_gpus is None:
                cell = f"> {r.max_gpus}"
            else:
                cell = f"{so.num_gpus} ({fmt_bytes(so.per_gpu_bytes, unit)}"
                cell += f"; CPU {fmt_bytes(so.cpu_bytes_per_node, unit)}/node)" if so.strategy.offload else ")"
            cells[(so.gpu, so.method, so.strategy.name)] = cell
        out += ["", f"Fewest GPUs by strategy, at the setup asked (GPUs (per GPU); up to --max-gpus {r.max_gpus})"]
        out.append(table(["gpu", "method", *[st.name for st in STRATEGIES]],
                         [[g, m, *[cells[(g, m, st.name)] for st in STRATEGIES]] for g, m in pairs], align_left=2))

    out += ["", "Shortlist (runnable options; time at the assumed MFU, rent at on-demand prices, perfect scaling)"]
    short = p.shortlist()
    srows = []
    for crit, opts in short.items():
        for i, o in enumerate(opts, 1):
            c = o.cost
            be = f"{c.break_even_runs:,.1f}" if c.break_even_runs is not None else "-"
            srows.append([f"{crit} #{i}", o.gpu.id, str(o.num_gpus), o.strategy, o.method,
                          "as asked" if o.fits else verdict_text(o), fmt_hours(c.hours), fmt_usd(c.rent_usd),
                          fmt_usd(c.purchase_usd), be])
    if srows:
        out.append(table(["", "gpu", "GPUs", "strategy", "method", "needs", "time", "rent", "buy", "break-even runs"],
                         srows, align_left=6))
    else:
        out.append("  no runnable option with a known peak FLOP/s (see the verdicts above)")

    out += ["", "Assumptions"]
    out += [f"  {k}: {v}" for k, v in plan_assumptions(p).items()]
    out.append(f"  ({unit.value} = {unit.bytes:,} bytes)")
    return "\n".join(out)
