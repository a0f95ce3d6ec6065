"""Assembling reports: which tables and figures a model report and a validation report hold, in order.

`model_report` turns one model's analytic estimate (and the planner's options, when given) into a
`page.Report`; `validation_report` does the same for measured results. Both are pure: they return the
report, `page.write_report` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from peftcalc.estimate import Estimate, estimate
from peftcalc.hardware.catalogue import Gpu
from peftcalc.methods import MethodOptions
from peftcalc.model.spec import ModelSpec
from peftcalc.render.estimate import assumptions as estimate_assumptions
from peftcalc.render.text import fmt_bytes, fmt_count, fmt_percent
from peftcalc.report import figures as fig
from peftcalc.report import frames as fr
from peftcalc.results.files import Record
from peftcalc.report.page import (Plot, Report, Section, Table, bytes_fmt, count_fmt, error_fmt, format_frame,
                                  hours_fmt, percent_fmt, size_fmt, usd_fmt)
from peftcalc.setup import Setup
from peftcalc.units import Unit

# GPUs drawn as capacity lines on the memory plots: one of each common memory size.
CAPACITY_GPUS = ("rtx-4090", "l40s", "h100-80gb", "h200")
# Methods on the time/cost figure (all of them are in its table).
COST_METHODS = ("full", "lora", "qlora")


def _pivot(df: pd.DataFrame, index: str, value: str, methods: Sequence[str], fmt: Any, index_label: str) -> pd.DataFrame:
    """A long (method, x, value) frame as x rows x method columns of formatted values, for reading."""
    wide = df.pivot(index=index, columns="method", values=value)
    wide = wide[[m for m in methods if m in wide.columns]].reset_index()
    out = format_frame(wide, {m: fmt for m in methods}, rename={index: index_label})
    out[index_label] = [f"{int(v):,}" for v in wide[index]]
    return out


@dataclass(frozen=True)
class ModelContext:
    """What every section of a model report shares."""

    spec: ModelSpec
    setup: Setup
    methods: tuple[str, ...]
    options: MethodOptions
    unit: Unit
    setup_line: str  # the setup each figure assumes, in one line


def model_report(spec: ModelSpec, setup: Setup, methods: Sequence[str], options: MethodOptions, *,
                 num_tasks: int = 10, plan: fr.PlanView | None = None, gpus: Sequence[Gpu] = (),
                 capacity_gpus: Sequence[Gpu] = (), training: str | None = None, unit: Unit = Unit.GB,
                 command: str = "peftcalc report") -> Report:
    """The report for one model: method comparison, memory (by component, vs sequence and batch), LoRA
    rank, storage for N tasks, and, with the planner's `plan` (its options and assumptions), the GPU
    fit matrix and time/cost per GPU option for `gpus` (`training`: the tokens the plan assumes, in words)."""
    ctx = ModelContext(spec, setup, tuple(methods), options, unit, fr.describe_setup(spec, setup, options))
    est = estimate(spec, setup, ctx.methods, options, num_tasks)
    caps = fr.capacity_frame(capacity_gpus)
    sections = [_comparison_section(ctx, est, num_tasks), _breakdown_section(ctx, est), _sweep_section(ctx, caps),
                _rank_section(ctx), _storage_section(ctx, est)]
    report_assumptions = dict(estimate_assumptions(est))
    report_assumptions["GPU capacity lines"] = ("usable memory from the GPU catalogue: "
                                                + ", ".join(caps["gpu"]) if len(caps) else "none")
    if plan is not None:
        sections += _plan_sections(ctx, plan, gpus, training)
        for k, v in plan.assumptions.items():
            if report_assumptions.get(k) != v:  # the planner repeats the estimate's own assumptions
                report_assumptions[f"plan: {k}"] = v if isinstance(v, str) else str(v)
    name = f"a {spec.total_params / 1e9:.3g}B-parameter model" if spec.is_inferred else spec.name
    title = f"Fine-tuning {name}: memory, storage, time and cost per method"
    summary = [f"Setup: {ctx.setup_line}.",
               f"Methods: {', '.join(ctx.methods)}. Bytes in {unit.value} ({unit.value} = {unit.bytes:,} bytes)."]
    return Report(title, summary, sections, {k: str(v) for k, v in report_assumptions.items()}, command)


def _comparison_section(ctx: ModelContext, est: Estimate, num_tasks: int) -> Section:
    """The seed's comparison table, for this model."""
    b, unit = bytes_fmt(ctx.unit), ctx.unit
    comp = fr.comparison_frame(est)
    comp_display = format_frame(
        comp, {"trainable_params": count_fmt, "trainable_percent": percent_fmt, "model_states_bytes": b,
               "activations_bytes": b, "peak_bytes": b, "checkpoint_bytes": size_fmt(unit), "tasks_bytes": size_fmt(unit),
               "full_copies_bytes": b},
        columns=["title", "trainable_params", "trainable_percent", "model_states_bytes", "activations_bytes",
                 "peak_bytes", "checkpoint_bytes", "tasks_bytes", "full_copies_bytes"],
        rename={"title": "method", "trainable_params": "trainable params", "trainable_percent": "trainable %",
                "model_states_bytes": "model states (exact)", "activations_bytes": "activations (estimate)",
                "peak_bytes": "peak per GPU", "checkpoint_bytes": "checkpoint per task",
                "tasks_bytes": f"{num_tasks} tasks", "full_copies_bytes": f"{num_tasks} full copies"})
    return Section("Method comparison", _headline(est, unit), [
        Table("comparison", "Parameters, memory and storage per method", comp, comp_display,
              "model states = weights + gradients + optimizer states + master weights; peak per GPU = the most "
              "memory live at any moment of one step (forward, backward or optimizer step) plus the assumed overhead"),
    ])


def _breakdown_section(ctx: ModelContext, est: Estimate) -> Section:
    b = bytes_fmt(ctx.unit)
    bd = fr.breakdown_frame(est)
    bd_cols = [c for _, c in fr.COMPONENTS] + ["total_bytes"]
    bd_display = format_frame(bd, {c: b for c in bd_cols}, columns=["method", *bd_cols, "peak_phase"],
                              rename={c: n for n, c in fr.COMPONENTS} | {"total_bytes": "peak per GPU",
                                                                          "peak_phase": "peak in"})
    return Section("Memory per GPU", [
        "Where the peak of one training step goes, per method. Weights, gradients, optimizer states and master "
        "weights are exact for the model's tensors; activations and temporaries (what the step holds above its "
        "model states at its peak: saved activations, the loss, the optimizer's scratch) are an estimate; the "
        "overhead (CUDA context, library workspaces) is assumed."], [
        Plot("memory-breakdown", "Memory per GPU by component",
             fig.memory_breakdown_figure(bd, ctx.setup_line, ctx.unit)),
        Table("memory-breakdown", "Memory per GPU by component, in numbers", bd, bd_display),
    ])


def _sweep_section(ctx: ModelContext, caps: pd.DataFrame) -> Section:
    """Memory vs sequence length and batch size, with the GPUs' capacity lines."""
    spec, setup, methods, options, b = ctx.spec, ctx.setup, ctx.methods, ctx.options, bytes_fmt(ctx.unit)
    seq = fr.sweep_frame(spec, setup, methods, options, "seq_len", fr.DEFAULT_SEQ_LENS)
    batch = fr.sweep_frame(spec, setup, methods, options, "batch_size", fr.DEFAULT_BATCH_SIZES)
    seq_line = fr.describe_setup(spec, setup, options, vary="seq_len")
    batch_line = fr.describe_setup(spec, setup, options, vary="batch_size")
    return Section("Memory vs sequence length and batch size", [
        "Peak memory per GPU as the sequence or the micro-batch grows, everything else as above. A method fits on a "
        "GPU where its line is under the GPU's dashed line (usable memory; the CUDA context is in the assumed "
        "overhead)."], [
        Plot("memory-vs-seq", "Peak memory per GPU vs sequence length",
             fig.memory_sweep_figure(seq, caps, "seq_len", seq_line, ctx.unit, spec.arch.max_positions)),
        Table("memory-vs-seq", "Peak memory per GPU by sequence length, in numbers", seq,
              _pivot(seq, "seq_len", "peak_bytes", methods, b, "sequence length")),
        Plot("memory-vs-batch", "Peak memory per GPU vs batch size",
             fig.memory_sweep_figure(batch, caps, "batch_size", batch_line, ctx.unit)),
        Table("memory-vs-batch", "Peak memory per GPU by micro-batch, in numbers", batch,
              _pivot(batch, "batch_size", "peak_bytes", methods, b, "micro-batch")),
        Table("gpu-capacity", "GPU memory drawn as lines", caps,
              format_frame(caps, {"memory_bytes": b, "usable_memory_bytes": b},
                           rename={"memory_bytes": "memory", "usable_memory_bytes": "usable"})),
    ])


def _rank_section(ctx: ModelContext) -> Section:
    ranked = [m for m in ctx.methods if m in fr.RANKED_METHODS] or list(fr.RANKED_METHODS)
    ranks = fr.rank_frame(ctx.spec, ctx.setup, ctx.options, fr.DEFAULT_RANKS, ranked)
    return Section("LoRA rank", [
        "LoRA trains r(m+n) parameters for an m x n matrix instead of mn: linear in the rank, as is the checkpoint."], [
        Plot("lora-rank", "Trainable parameters and checkpoint size vs LoRA rank",
             fig.rank_figure(ranks, fr.describe_setup(ctx.spec, ctx.setup, None) + " · rank varies", ctx.unit)),
        Table("lora-rank", "Trainable parameters and checkpoint size by rank, in numbers", ranks,
              _rank_pivot(ranks, ranked, ctx.unit)),
    ])


def _storage_section(ctx: ModelContext, est: Estimate) -> Section:
    st = fr.storage_frame(est)
    st_display = _pivot(st, "num_tasks", "total_bytes", ctx.methods, bytes_fmt(ctx.unit), "tasks")
    return Section("Storage for N tasks", [
        "Disk for N fine-tuned tasks: the adapter methods keep one base model and a small checkpoint per task; full "
        "fine-tuning keeps a whole copy per task (the `full` column)."], [
        Plot("storage-tasks", "Storage for N tasks: adapters vs full copies",
             fig.storage_figure(st, ctx.setup_line, ctx.unit)),
        Table("storage-tasks", "Disk for N tasks (base model + checkpoints)", st, st_display),
    ])


def _plan_sections(ctx: ModelContext, plan: fr.PlanView, gpus: Sequence[Gpu], training: str | None) -> list[Section]:
    """The planner's fit matrix, and time and cost per GPU option."""
    options_df = fr.plan_frame(plan.rows)
    fit = fr.fit_frame(options_df, gpus, ctx.methods)
    cost = fr.cost_frame(options_df, ctx.methods)
    plan_cols = [c for c in options_df.columns if c not in ("per_gpu_bytes",)]
    cost_methods = [m for m in COST_METHODS if m in ctx.methods] or list(ctx.methods[:3])
    return [Section("Which GPUs fit", [
        "Each method on each GPU at the setup above, from `peftcalc plan`: green fits as asked, yellow fits with "
        "changes (a smaller micro-batch, gradient checkpointing, 8-bit Adam or optimizer offload), orange needs "
        "more GPUs (the fewest, with the sharding strategy, is shown), red does not fit within the planner's GPU "
        "limit."], [
        Plot("gpu-fit", "GPU fit matrix", fig.fit_matrix_figure(fit, ctx.setup_line, ctx.unit)),
        Table("gpu-fit", "GPU fit matrix, in words (peak per GPU, or what it needs)", fit, _fit_pivot(fit, ctx.unit)),
    ]), Section("Time and cost per GPU option", [
        "For each method and GPU, the fewest GPUs that fit, how long the run takes and what renting them costs, "
        "from `peftcalc plan` (its FLOPs, compute-rate and price assumptions are listed below)."], [
        Plot("time-cost", "Time and cost per GPU option",
             fig.time_cost_figure(cost, ctx.setup_line + (f" · {training}" if training else ""), cost_methods)),
        Table("time-cost", "GPUs, time and rent of the fewest GPUs that run each method", cost,
              _cost_pivot(cost, ctx.methods)),
        Table("plan-options", "Every option the planner evaluated", options_df, options_df[plan_cols], show=False,
              caption="every (GPU, number of GPUs, method) evaluated, fitting or not"),
    ])]


def _rank_pivot(ranks: pd.DataFrame, methods: Sequence[str], unit: Unit) -> pd.DataFrame:
    """Rank rows x (method: trainable parameters, checkpoint) columns, as text."""
    out = pd.DataFrame({"rank": [str(r) for r in sorted(ranks["rank"].unique())]})
    for m in methods:
        g = ranks[ranks["method"] == m].sort_values("rank")
        out[f"{m} params"] = [fmt_count(int(v)) for v in g["trainable_params"]]
        out[f"{m} checkpoint"] = [size_fmt(unit)(v) for v in g["checkpoint_bytes"]]
    return out


def _fit_pivot(fit: pd.DataFrame, unit: Unit) -> pd.DataFrame:
    """The fit matrix as text, GPU rows x method columns: the peak when it fits, else what it needs."""
    def cell(row: pd.Series) -> str:
        if row["status"] == "fits":
            return fmt_bytes(int(row["per_gpu_bytes"]), unit)
        if row["status"] == "fits with changes":
            return "with " + str(row["fits_with"]).replace("+", " + ")
        if row["status"] == "needs more GPUs":
            return f"{row['min_gpus']} GPUs ({row['min_gpus_strategy']})"
        return "does not fit"
    cells = fit.assign(cell=fit.apply(cell, axis=1))
    wide = cells.pivot(index="gpu", columns="method", values="cell")
    methods = list(dict.fromkeys(fit["method"]))
    return wide[methods].reindex(list(dict.fromkeys(fit["gpu"]))).reset_index().fillna("-")


def _cost_pivot(cost: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Time and rent as text, GPU rows x method columns: "N x, hours, rent" of the fewest GPUs that run."""
    def cell(row: pd.Series) -> str:
        rent = "no rent price" if pd.isna(row["rent_usd"]) else usd_fmt(row["rent_usd"])
        return f"{row['num_gpus']} x, {hours_fmt(row['hours'])}, {rent}"
    cells = cost.assign(cell=cost.apply(cell, axis=1))
    wide = cells.pivot(index="gpu", columns="method", values="cell")
    cols = [m for m in methods if m in wide.columns]
    return wide[cols].sort_index().reset_index().fillna("-")


def _headline(est: Any, unit: Unit) -> list[str]:
    out = []
    names = [r.method for r in est.results]
    if "full" in names:
        m = est.result("full").memory
        out.append(f"Full fine-tuning holds {fmt_bytes(m.model_state_bytes, unit)} of model states: weights "
                   f"{fmt_bytes(m.weight_bytes, unit)}, gradients {fmt_bytes(m.gradient_bytes, unit)}, optimizer states "
                   f"{fmt_bytes(m.optimizer_state_bytes, unit)}, master weights {fmt_bytes(m.master_weight_bytes, unit)}; "
                   f"its device total per GPU (allocated peak {fmt_bytes(m.allocated_bytes, unit)}, reserved "
                   f"{fmt_bytes(m.reserved_bytes, unit)}, CUDA context included) is {fmt_bytes(m.total, unit)}.")
    if "lora" in names:
        r = est.result("lora")
        size = size_fmt(unit)
        out.append(f"LoRA (r={est.options.rank}) trains {fmt_count(r.params.trainable)} parameters "
                   f"({fmt_percent(r.params.percent)}), needs {fmt_bytes(r.memory.total, unit)} per GPU (device total) and saves "
                   f"{size(r.checkpoint.checkpoint_bytes)} per task; {r.checkpoint.num_tasks} tasks take "
                   f"{size(r.checkpoint.tasks_bytes)} of adapters against {size(r.checkpoint.full_copies_bytes)} of full "
                   "copies.")
    return out


ERROR_FORMATS = {"mean_abs_error_percent": lambda v: f"{float(v):.2f} %",
                 "max_abs_error_percent": lambda v: f"{float(v):.2f} %", "mean_error_percent": error_fmt}
ERROR_NAMES = {"mean_abs_error_percent": "mean |error|", "max_abs_error_percent": "worst |error|",
               "mean_error_percent": "mean error (bias)"}


def validation_report(records: Sequence[Record], source: str, *, band_percent: float = 2.0,
                      worst: int = 15, unit: Unit = Unit.GB, command: str = "peftcalc report",
                      published: Sequence[Any] | None = None) -> Report:
    """Predicted vs traced/measured: the scatter with the identity line and a band, the error by method and
    architecture, per component, and the worst runs; with `published` (peftcalc.evidence comparisons), the
    published GPU runs against the estimate, by framework."""
    results = fr.results_frame(records)
    compared = fr.compared_frame(results)
    setup_line = _results_setup(results, source)
    sections = [
        _runs_section(records, results, compared, source),
        _compared_section(results, compared, setup_line, band_percent, unit),
        _distribution_section(results, compared, setup_line, band_percent),
        _worst_section(results, worst, unit),
    ]
    if published:
        sections.append(_published_section(published, unit))
    assumptions = {
        "results": source,
        "error": "(predicted - measured) / measured, for the peak unless a component is named",
        "band": f"±{band_percent:g} % around the identity line",
        "traced": "the real transformers + peft training step on fake tensors, every live storage counted",
        "measured CPU": "the same step on real tensors on the CPU",
        "measured GPU": "the same step on a GPU (torch.cuda.max_memory_allocated)",
        "predictions": "the analytic estimate of this code for each run's model, setup and method options (else the "
                       "one recorded with the result), without the assumed CUDA/library overhead (no tensor); weights "
                       "include buffers and fp32 master weights, as the measured backend counts them "
                       "(peftcalc/results/predict.py, the same prediction `peftcalc validate` checks)",
    }
    title = "Validation: predicted vs traced and measured memory"
    summary = [setup_line + ".", f"Bytes in {unit.value} ({unit.value} = {unit.bytes:,} bytes)."]
    return Report(title, summary, sections, assumptions, command)


def _runs_section(records: Sequence[Record], results: pd.DataFrame, compared: pd.DataFrame, source: str) -> Section:
    failures = fr.failures_frame(records)
    return Section("Runs", [f"{len(results)} result lines from {source}; {len(compared)} completed runs have both a "
                            f"prediction and a measurement of the peak; {int(failures['runs'].sum())} did not "
                            "complete."], [
        Table("runs-by-status", "Runs by layer and status", fr.status_frame(results)),
        Table("failed-runs", "Runs that did not complete, by cause", failures,
              caption="out-of-memory runs are results; errors and unsupported combinations are listed with "
                      "their message"),
    ])


def _compared_section(results: pd.DataFrame, compared: pd.DataFrame, setup_line: str, band_percent: float,
                      unit: Unit) -> Section:
    history = fr.prediction_history_frame(results)
    components = fr.component_error_frame(results)
    current = int((compared["prediction"] == "current").sum())
    return Section("Predicted vs measured", [
        "Each point is one run: the analytic prediction of the peak against what the traced step (fake tensors) "
        f"or the real step (CPU, GPU) allocated. On the identity line the prediction is exact; the grey band is "
        f"±{band_percent:g} %.",
        f"Predictions are the analytic model's as this code computes it now ({current} of {len(compared)} runs); "
        f"the others, whose model cannot be rebuilt, use the prediction recorded with the result."], [
        Plot("predicted-vs-measured", "Predicted vs measured peak memory",
             fig.predicted_vs_measured_figure(compared, setup_line, band_percent, unit)),
        Table("prediction-history", "Peak error: the predictions recorded with the results, and today's",
              history, format_frame(history, ERROR_FORMATS, rename=ERROR_NAMES | {"within_2_percent": "within ±2 %"})),
        Table("error-by-component", "Error by component", components,
              format_frame(components, ERROR_FORMATS, rename=ERROR_NAMES)),
    ])


def _distribution_section(results: pd.DataFrame, compared: pd.DataFrame, setup_line: str,
                          band_percent: float) -> Section:
    by_method = fr.error_summary_frame(results, "method")
    by_family = fr.error_summary_frame(results, "family")
    return Section("Error distribution", [
        "The peak's error in % of the measurement (positive: the prediction is larger), by method and by "
        "architecture family."], [
        Plot("error-distribution", "Prediction error of the peak, by method and architecture",
             fig.error_distribution_figure(compared, setup_line, band_percent)),
        Table("error-by-method", "Error by method", by_method,
              format_frame(by_method, ERROR_FORMATS, rename=ERROR_NAMES)),
        Table("error-by-family", "Error by architecture family", by_family,
              format_frame(by_family, ERROR_FORMATS, rename=ERROR_NAMES)),
    ])


def _worst_section(results: pd.DataFrame, worst: int, unit: Unit) -> Section:
    b = bytes_fmt(unit)
    worst_df = fr.worst_runs_frame(results, worst)
    worst_display = format_frame(
        worst_df, {"measured_peak_bytes": b, "predicted_peak_bytes": b, "peak_error_bytes": b,
                   "peak_error_percent": error_fmt, "recorded_peak_error_percent": error_fmt},
        rename={"measured_peak_bytes": "measured peak", "predicted_peak_bytes": "predicted peak",
                "peak_error_bytes": "error", "peak_error_percent": "error %",
                "recorded_peak_error_percent": "error % (recorded prediction)", "peak_phase": "peak phase"})
    return Section("Worst runs", [f"The {len(worst_df)} runs whose predicted peak is furthest from the measurement."], [
        Table("worst-runs", "Worst runs", worst_df, worst_display),
        Table("runs", "Every run", results, show=False, caption="every result line, predicted and measured bytes "
                                                                 "per component"),
    ])


def _results_setup(results: pd.DataFrame, source: str) -> str:
    """What the results cover, in one line: the 'setup' their figures assume."""
    def span(col: str) -> str:
        v = results[col].dropna()
        if not len(v):
            return "?"
        return f"{int(v.min()):,}" if v.min() == v.max() else f"{int(v.min()):,}-{int(v.max()):,}"
    layers = ", ".join(f"{n} {k}" for k, n in results["layer"].value_counts().sort_index().items())
    precisions = ", ".join(sorted(results["precision"].dropna().astype(str).unique())) or "?"
    return (f"{len(results)} runs from {source} · {layers} · {results['model'].nunique()} models · "
            f"{results['method'].nunique()} methods · precision {precisions} · seq {span('seq_len')} · "
            f"batch {span('batch_size')}")


def _published_section(comparisons: Sequence[Any], unit: Unit) -> Section:
    """Published GPU runs (bench/published/memory) against the estimate of each run (`peftcalc validate
    --published`): the scatter by framework, the summary by group and confidence, the worst gated records, the
    records not predicted and why."""
    from peftcalc.evidence.summary import conclude

    df = fr.published_frame(comparisons)
    c = conclude(list(comparisons), worst=10)
    g = c.gate.summary
    summary = fr.published_summary_frame(df)
    pct = {"median_abs_error_percent": lambda v: "-" if pd.isna(v) else f"{float(v):.1f} %",
           "within_10_percent": lambda v: "-" if pd.isna(v) else f"{float(v):.0f} %",
           "max_abs_error_percent": lambda v: "-" if pd.isna(v) else f"{float(v):.1f} %"}
    worst = df[df["id"].isin([w.record.id for w in c.worst])]
    b = bytes_fmt(unit)
    setup_line = (f"{len(df)} published records · {int(df['error_percent'].notna().sum())} predicted · "
                  "estimated for each record's run, in the quantity its source measured")
    verdict = "passes" if c.gate.passed else "fails"
    return Section("Published GPU runs", [
        "Every published GPU-memory measurement of bench/published/memory against the estimate of its run, in the "
        "quantity its source measured: torch.cuda.max_memory_allocated against the allocated peak, "
        "max_memory_reserved against reserved, nvidia-smi against the device total (CUDA context included).",
        "torchtune and litgpt run their own model code (a fused qkv projection, their own attention and chunked "
        "loss), not transformers': their records are shown beside, not in the gate.",
        f"Gate over the high- and medium-confidence transformers + peft records: median |error| "
        f"{g.median if g.median is not None else float('nan'):.1f} % (limit 5 %), "
        f"{g.within if g.within is not None else 0:.0f} % within 10 % (at least 80 %), QLoRA within 10 %: "
        f"{c.gate.qlora_within} of {c.gate.qlora}; it {verdict}. One-GPU runs of the gate: median |error| "
        f"{c.single_gpu.median if c.single_gpu.median is not None else float('nan'):.1f} %, "
        f"{c.single_gpu.within or 0:.0f} % within 10 %."], [
        Plot("published-scatter", "Published GPU runs: estimated vs published",
             fig.published_scatter_figure(df, setup_line, unit)),
        Table("published-summary", "Published GPU runs by group and confidence", summary,
              format_frame(summary, pct, rename={"median_abs_error_percent": "median |error|",
                                                 "within_10_percent": "within ±10 %",
                                                 "max_abs_error_percent": "worst |error|"})),
        Table("published-worst", "The gated records furthest from their estimate", worst,
              format_frame(worst[["id", "quantity", "measured_bytes", "predicted_bytes", "error_percent", "flags"]],
                           {"measured_bytes": b, "predicted_bytes": b, "error_percent": error_fmt},
                           rename={"measured_bytes": "published", "predicted_bytes": "estimated",
                                   "error_percent": "error %"})),
        Table("published-not-predicted", "Records not predicted yet, by reason", fr.not_predicted_frame(df)),
        Table("published-records", "Every published record", df, show=False,
              caption="each record's measured and estimated bytes, or why it is not predicted"),
    ])
