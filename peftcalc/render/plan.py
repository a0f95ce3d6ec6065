"""A plan as a terminal report, JSON and CSV, with the assumptions it rests on."""

from __future__ import annotations

from typing import Any

from peftcalc.estimate import Estimate
from peftcalc.hardware.mfu import mfu_for
from peftcalc.methods import make_method
from peftcalc.hardware.planner import (GPUS_PER_NODE, MAX_BATCH_SIZE, MAX_SEQ_LEN, STRATEGIES, Option, Plan,
                                       Verdict)
from peftcalc.render.estimate import assumptions
from peftcalc.render.text import fmt_bytes, fmt_hours, fmt_limit, fmt_signed, fmt_usd, table, to_csv
from peftcalc.units import Unit


def verdict_text(o: Option) -> str:
    if o.remedies:
        parts = [f"batch {o.run_setup.batch_size}" if r == "smaller batch" else r for r in o.remedies]
        return "fits with " + " + ".join(parts)
    return o.verdict.value


def plan_assumptions(p: Plan, files: Any = None) -> dict[str, str]:
    """What every number of the plan rests on: the estimate's assumptions plus the planner's."""
    r = p.request
    out = assumptions(Estimate(r.spec, r.setup, r.options, ()), files)
    out.pop("checkpoints", None)
    out["training"] = training_line(r)
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
            m = mfu_for(gpu, False, None)
            groups.setdefault((m.value, m.basis), []).append(gpu.id)
        lines = [f"{value:.0%} for {', '.join(ids)} ({basis})" for (value, basis), ids in groups.items()]
        quantized = [m for m in r.methods if make_method(m, r.options).adapt(r.spec).quantized_base]
        if quantized:
            q = mfu_for(r.gpus[0], True, None)
            lines.append(f"{', '.join(quantized)} x{q.value / mfu_for(r.gpus[0], False, None).value:.2f}")
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


def training_line(r: Any) -> str:
    """How much the run trains: tokens x epochs, or optimizer steps; and the tokens of one optimizer step."""
    s = r.setup
    per_step = (f"{r.tokens_per_step:,} tokens per optimizer step ({s.batch_size} x {s.seq_len} tokens x "
                f"{s.gradient_accumulation} micro-batch(es) x {s.num_gpus} GPU(s))")
    if r.steps is not None:
        tokens, _ = r.run_tokens
        return (f"{r.steps:,} optimizer steps (--steps) x {per_step} = {tokens:,} tokens; other GPU counts keep this "
                "global batch (accumulation adjusted)")
    total = round(r.tokens * r.epochs)
    return (f"{r.tokens:,} tokens per epoch x {r.epochs:g} epoch(s) = {total:,} tokens (--tokens, --epochs); "
            f"{per_step}: {r.optimizer_steps:,.0f} optimizer steps")


def _option_dict(o: Option) -> dict[str, Any]:
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


def _ref(o: Option) -> dict[str, Any]:
    return {"gpu": o.gpu.id, "num_gpus": o.num_gpus, "method": o.method, "strategy": o.strategy, "kind": o.kind,
            "fits_with": list(o.remedies) if o.remedies else None, "hours": o.hours, "rent_usd": o.rent_usd}


def plan_dict(p: Plan, files: Any = None) -> dict[str, Any]:
    """The JSON contract (issue 5): every option evaluated, fitting or not; nulls where not applicable."""
    return {
        "options": [_option_dict(o) for o in p.options],
        "scale_out": [{"gpu": s.gpu, "method": s.method, "strategy": s.strategy.name, "num_gpus": s.num_gpus,
                       "per_gpu_bytes": s.per_gpu_bytes, "cpu_bytes_per_node": s.cpu_bytes_per_node}
                      for s in p.scale_out],
        "shortlist": {k: [_ref(o) for o in v] for k, v in p.shortlist().items()},
        "training": {"tokens": p.request.run_tokens[0], "epochs": p.request.run_tokens[1],
                     "steps": p.request.steps, "tokens_per_step": p.request.tokens_per_step,
                     "optimizer_steps": p.request.optimizer_steps},
        "assumptions": plan_assumptions(p, files),
    }


CSV_FIELDS = ("gpu", "num_gpus", "method", "strategy", "kind", "fits", "verdict", "fits_with", "per_gpu_bytes",
              "capacity_bytes", "margin_bytes", "limiting_component", "max_batch_size", "max_seq_len",
              "cpu_bytes_per_node", "flops_per_token", "mfu", "hours", "rent_usd", "purchase_usd", "break_even_runs")


def plan_csv(p: Plan) -> str:
    rows = []
    for o in p.options:
        d = _option_dict(o)
        d["fits_with"] = "+".join(d["fits_with"] or [])
        rows.append(["" if d[k] is None else d[k] for k in CSV_FIELDS])
    return to_csv(CSV_FIELDS, rows)


def plan_text(p: Plan, unit: Unit, files: Any = None) -> str:
    r, s = p.request, p.request.setup
    out = [f"Plan: {r.spec.name} ({r.spec.total_params:,} params), {s.precision}, {s.optimizer}, micro-batch "
           f"{s.batch_size} x {s.seq_len} tokens, " + (f"{r.steps:,} optimizer steps" if r.steps is not None else
                                                          f"{r.tokens:,} tokens x {r.epochs:g} epoch(s)") +
           f", up to {r.max_gpus} GPUs",
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
    out += [f"  {k}: {v}" for k, v in plan_assumptions(p, files).items()]
    out.append(f"  ({unit.value} = {unit.bytes:,} bytes)")
    return "\n".join(out)
