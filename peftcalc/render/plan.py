"""A plan as a terminal report, JSON and CSV, with the assumptions it rests on."""

from __future__ import annotations

from typing import Any

from peftcalc.estimate import Estimate, adapt
from peftcalc.hardware.rates import rates_for
from peftcalc.methods import make_method
from peftcalc.hardware.planner import (ASSUMED_HOST_SHARE, MAX_BATCH_SIZE, MAX_SEQ_LEN, STRATEGIES, Option, Plan,
                                       Verdict)
from peftcalc.hardware.steptime import ASSUMPTIONS as STEP_ASSUMPTIONS, NO_KERNELS
from peftcalc.render.estimate import activations_line, assumptions
from peftcalc.render.text import fmt_bytes, fmt_hours, fmt_limit, fmt_signed, fmt_usd, table, to_csv
from peftcalc.stepsim.result import replayable
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
                    "prefixes the keys; N = parameters in matmuls (embeddings excluded, active experts only); the "
                    "count MFU is quoted in, not what times the step (see compute)")
    replayed, profiled = _activation_paths(r)
    out["activations"] = activations_line(replayed, {"": profiled} if profiled else {})
    out["compute"] = _compute_line(r) + (f"; {', '.join(profiled)}: {NO_KERNELS}" if profiled and r.mfu is None
                                         else "")
    out["time"] = ("steps x (compute + exposed communication + exposed offload) per optimizer step "
                   "(peftcalc/hardware/steptime.py); communication = each collective's bytes per rank (ring algorithm; "
                   "peftcalc/collectives.py) / the bandwidth of the slowest link it crosses (intra-node, or inter-node "
                   "per GPU once a group spans nodes); no data loading, evaluation, checkpointing or start-up time")
    for k, v in STEP_ASSUMPTIONS.items():
        out[f"time: {k}"] = v
    nodes = {}
    for gpu in r.gpus:
        n = r.node_of(gpu)
        nodes[n.id] = (f"{n.id}: {n.gpus_per_node} x {gpu.id}, intra-node {_gbps(n.intra_node.bytes_per_s_per_gpu)}"
                       f" ({n.intra_node.kind}), inter-node {_gbps(n.inter_node.bytes_per_s_per_gpu)} per GPU "
                       f"({n.inter_node.kind}), host link {_gbps(n.host_link.bytes_per_s_per_gpu)}"
                       + (" - ASSUMED generic node, no node file names this GPU" if n.assumed else ""))
    out["nodes"] = ("GPUs counted in whole nodes once past one node (`peftcalc nodes`; --node chooses): "
                    + "; ".join(nodes.values()))
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
                        "strategy only when it needs fewer GPUs than those before it; an offload option runs only "
                        "when the node's host memory holds its GPUs' offloaded states")
    out["prices"] = ("rent: whole nodes at the node's price where sourced, else the GPUs billed (whole nodes past one "
                     "node) x on-demand rent per GPU-hour; buy: whole nodes at the node's price where sourced, else "
                     f"GPUs x street price + an ASSUMED {ASSUMED_HOST_SHARE:.0%} for the host (marked 'est.'; Apple: "
                     "whole machines); each dated and sourced in `peftcalc gpus` / `peftcalc nodes`; power, "
                     "networking and operations excluded; break-even runs = purchase / rent of one run")
    if r.setup.precision == "fp32":
        out["precision note"] = ("--precision fp32 computes at the fp32 peak, far below tensor-core "
                                 "rates; most runs use --precision bf16-mixed")
    return out


def _activation_paths(r: Any) -> tuple[list[str], list[str]]:
    """The requested methods whose step the hand-written replay covers, and those a traced profile estimates."""
    replayed, profiled = [], []
    for name in r.methods:
        (replayed if replayable(adapt(r.spec, make_method(name, r.options))) else profiled).append(name)
    return replayed, profiled


def _compute_line(r: Any) -> str:
    if r.mfu is not None:
        return f"MFU {r.mfu:g} for every GPU and method (--mfu), applied to the FLOPs above, recomputation included"
    st = r.setup
    return ("the replayed step's kernels at each GPU's rates (peftcalc/hardware/compute_time.py): every matmul by its "
            "roofline, fused attention, the other operators' memory traffic, host launch time, the optimizer's traffic"
            f"{' and gradient clipping' if st.grad_clipping else ''}; "
            f"{'torch.compile (fused pointwise operators)' if st.compile else 'eager PyTorch'}; the MFU column is the "
            "one that time implies. Rates: " + "; ".join(_rates_line(gpu, st.recipe.compute_dtype) for gpu in r.gpus))


def _rates_line(gpu: Any, dtype: str) -> str:
    rates, peak = rates_for(gpu, dtype), gpu.flops_per_s(dtype)
    if rates is None:
        return f"{gpu.id}: no {dtype} peak"
    how = "measured" if "measured" in rates.basis[0] else "peak x 0.803, no public measurement"
    return (f"{gpu.id}: matmuls {rates.matmul_flops_per_s / 1e12:,.0f} TFLOP/s ({how}; `peftcalc gpus --json` "
            f"matmul_source), attention {rates.attention_flops_per_s / peak:.0%} of the peak, "
            f"{rates.memory_bytes_per_s / 1e9:,.0f} GB/s")


def _gbps(v: int | None) -> str:
    return "none" if v is None else f"{v / 1e9:,.1f} GB/s"


def _step_dict(o: Option) -> dict[str, Any]:
    step = o.cost.step if o.cost else None
    if step is None:
        return {"step_seconds": None, "step_seconds_by_part": None, "compute_seconds_by_kind": None,
                "communication": None}
    return {
        "step_seconds": step.step_seconds,
        "step_seconds_by_part": step.by_part,
        "compute_seconds_by_kind": step.compute_parts,
        "communication": {
            "sent_bytes_per_step": step.volume.sent_bytes,
            "by_kind": step.volume.by_kind(),
            "total_seconds": step.communication_total_seconds,
            "offload_total_seconds": step.offload_total_seconds,
            "bubble_seconds": step.bubble_seconds,
            "optimizer_seconds": step.optimizer_seconds,
            "tokens_per_step": step.tokens_per_step,
            "links": [{"group": g, "kind": k, "bytes_per_s": b} for g, k, b in step.links],
        },
    }


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
        "num_gpus": o.setup.gpus,  # every GPU the option uses: data x tensor x pipeline parallel
        "data_parallel": o.num_gpus,
        "node": o.node.id if o.node else None,
        "nodes": o.nodes,
        "tensor_parallel": o.setup.tensor_parallel,
        "pipeline_parallel": o.setup.pipeline_parallel,
        **_step_dict(o),
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
        "mfu": c.mfu.value if c and c.mfu else None,
        "purchase_estimated": c.purchase_estimated if c else None,
        "break_even_runs": c.break_even_runs if c else None,
        "note": c.note if c else None,
    }


def _ref(o: Option) -> dict[str, Any]:
    return {"gpu": o.gpu.id, "num_gpus": o.setup.gpus, "nodes": o.nodes, "method": o.method, "strategy": o.strategy,
            "kind": o.kind, "fits_with": list(o.remedies) if o.remedies else None, "hours": o.hours,
            "step_seconds": o.step_seconds, "rent_usd": o.rent_usd}


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


CSV_FIELDS = ("gpu", "num_gpus", "node", "nodes", "method", "strategy", "kind", "fits", "verdict", "fits_with",
              "per_gpu_bytes", "capacity_bytes", "margin_bytes", "limiting_component", "max_batch_size", "max_seq_len",
              "cpu_bytes_per_node", "flops_per_token", "mfu", "step_seconds", "hours", "rent_usd", "purchase_usd",
              "break_even_runs")


def plan_csv(p: Plan) -> str:
    rows = []
    for o in p.options:
        d = _option_dict(o)
        d["fits_with"] = "+".join(d["fits_with"] or [])
        rows.append(["" if d[k] is None else d[k] for k in CSV_FIELDS])
    return to_csv(CSV_FIELDS, rows)


def gpus_text(o: Option) -> str:
    s = o.setup
    if s.tensor_parallel == 1 and s.pipeline_parallel == 1:
        return str(o.num_gpus)
    return f"{s.gpus} ({o.num_gpus}x{s.tensor_parallel}x{s.pipeline_parallel})"


def buy_text(o: Option) -> str:
    c = o.cost
    if c is None or c.purchase_usd is None:
        return fmt_usd(None)
    return fmt_usd(c.purchase_usd) + (" est." if c.purchase_estimated else "")


def _secs(v: float) -> str:
    return f"{v:,.2f} s" if v < 100 else f"{v:,.0f} s"


def step_table(p: Plan) -> list[str]:
    """One optimizer step by part, for the options that run (compute, then what communication and offload add)."""
    rows = []
    for o in p.options:
        step = o.cost.step if o.cost else None
        if step is None:
            continue
        links = ", ".join(f"{g}: {k} {b / 1e9:,.0f} GB/s" for g, k, b in step.links) or "-"
        rows.append([o.gpu.id, gpus_text(o), o.strategy, o.method, _secs(step.step_seconds),
                     _secs(step.compute_seconds), f"{step.mfu:.0%}", _secs(step.communication_seconds), _secs(step.offload_seconds),
                     f"{step.volume.sent_bytes / 1e9:,.1f} GB", f"{step.tokens_per_step:,}", links])
    if not rows:
        return []
    return ["", "Time per optimizer step (compute incl. pipeline bubble; MFU: what the compute time implies; "
                "communication and offload: what compute does not hide; sent = bytes one GPU sends per step)",
            table(["gpu", "GPUs", "strategy", "method", "step", "compute", "MFU", "communication", "offload", "sent",
                   "tokens/step", "links"], rows, align_left=4)]


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
        rows.append([o.gpu.id, gpus_text(o), str(o.nodes), o.strategy, o.method, verdict_text(o),
                     fmt_bytes(o.per_gpu_bytes, unit), fmt_signed(o.margin_bytes, unit), o.limiting_component,
                     fmt_limit(o.max_batch_size, MAX_BATCH_SIZE), fmt_limit(o.max_seq_len, MAX_SEQ_LEN),
                     fmt_hours(c.hours if c else None), fmt_usd(c.rent_usd if c else None), buy_text(o)])
    out.append("Options (per GPU at the setup asked; limits, time and cost with the changes a verdict names)")
    out.append(table(["gpu", "GPUs", "nodes", "strategy", "method", "verdict", "peak/GPU", "margin", "largest part",
                      "max batch", "max seq", "time", "rent", "buy"], rows, align_left=6))
    out += step_table(p)
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

    out += ["", "Shortlist (runnable options; time per step by part as above, rent at on-demand prices)"]
    short = p.shortlist()
    srows = []
    for crit, opts in short.items():
        for i, o in enumerate(opts, 1):
            c = o.cost
            be = f"{c.break_even_runs:,.1f}" if c.break_even_runs is not None else "-"
            srows.append([f"{crit} #{i}", o.gpu.id, gpus_text(o), o.strategy, o.method,
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
