"""Estimates, plans and measured results -> pandas DataFrames: one function per table.

Every frame keeps exact integers (bytes, parameters) in columns whose unit is in the name, so its CSV is
the data, unformatted; `page.py` formats them for reading. Frames never hold anything that depends on
the machine that builds the report (no timestamps, versions or paths), so a report regenerated
elsewhere has byte-identical CSV files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftcalc.errors import PeftcalcError
from peftcalc.estimate import Estimate, MethodEstimate, estimate
from peftcalc.hardware.catalogue import Gpu
from peftcalc.hardware.planner import Option, Plan
from peftcalc.methods import METHODS, RANKED, MethodOptions
from peftcalc.model.spec import ModelSpec
from peftcalc.results.files import Record
from peftcalc.results.predict import repredict, request_of
from peftcalc.results.record import BYTE_KEYS, Bytes
from peftcalc.setup import Setup

# The parts of one GPU's peak, in stacking order; they sum to MemoryBreakdown.total exactly. What is
# live at the start of a step (weights, master weights, optimizer states, buffers and the batch) is exact;
# above it, the peak holds the gradients present at that moment (none if it is in forward) and the
# activations and temporaries (saved activations, the loss, the optimizer's scratch); then the overhead.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("weights", "weights_bytes"),
    ("gradients", "gradients_bytes"),
    ("optimizer states", "optimizer_states_bytes"),
    ("master weights", "master_weights_bytes"),
    ("buffers and batch", "buffers_and_batch_bytes"),
    ("activations and temporaries", "activations_and_temporaries_bytes"),
    ("overhead", "overhead_bytes"),
)

# Methods whose trainable parameters depend on the LoRA rank.
RANKED_METHODS = RANKED

DEFAULT_SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_TASK_COUNTS = (1, 2, 5, 10, 20, 50, 100)

# The measured components that results carry, predicted and measured (the measured backend's JSON names).
RESULT_COMPONENTS = BYTE_KEYS


# ---- one model: the analytic estimate ---------------------------------------------------------------

def model_label(spec: ModelSpec) -> str:
    """`llama-2-7b (6.74B params)`, or for a bare count `7.00B params (inferred Llama-style shape)`."""
    if spec.is_inferred:
        return f"{spec.total_params / 1e9:.2f}B params (inferred {spec.family}-style shape)"
    return f"{spec.name} ({spec.total_params / 1e9:.2f}B params)"


def describe_setup(spec: ModelSpec, setup: Setup, options: MethodOptions | None = None,
                   vary: str | None = None) -> str:
    """The setup a figure assumes, in one line a reader can check; `vary` names the field (seq_len or
    batch_size) that the figure sweeps instead."""
    p = setup.recipe
    batch = "varies" if vary == "batch_size" else str(setup.batch_size)
    seq = "varies" if vary == "seq_len" else str(setup.seq_len)
    parts = [
        model_label(spec),
        p.name,
        f"{setup.optimizer} ({setup.adamw_impl})",
        f"batch {batch} x seq {seq}",
        setup.attention,
        "grad. checkpointing" if setup.gradient_checkpointing else "no checkpointing",
        f"{setup.num_gpus} GPU" + ("s" if setup.num_gpus > 1 else "")
        + (f", ZeRO-{setup.zero_stage}" if setup.zero_stage else "") + (" + offload" if setup.offload else ""),
    ]
    if options is not None:
        parts.append(f"LoRA r={options.rank}")
    return " · ".join(parts)


def comparison_frame(est: Estimate) -> pd.DataFrame:
    """The seed document's comparison table for this model: one row per method."""
    rows = []
    for r in est.results:
        m = r.memory
        rows.append({
            "method": r.method,
            "title": METHODS[r.method].title,
            "trainable_params": r.params.trainable,
            "total_params": r.params.total,
            "trainable_percent": round(r.params.percent, 6),
            "model_states_bytes": m.model_state_bytes,
            "activations_bytes": m.activation_bytes,
            "peak_bytes": m.total,
            "checkpoint_bytes": r.checkpoint.checkpoint_bytes,
            "num_tasks": r.checkpoint.num_tasks,
            "tasks_bytes": r.checkpoint.tasks_bytes,
            "full_copies_bytes": r.checkpoint.full_copies_bytes,
        })
    return pd.DataFrame(rows)


def _components(r: MethodEstimate) -> dict[str, Any]:
    """The peak of one method split into COMPONENTS (and the phase it happens in, where the estimate says)."""
    m = r.memory
    if hasattr(m, "peak_phase"):  # the peak is the largest of the forward, backward and optimizer phases
        phase = m.peak_phase
        transient = m.peak_bytes - m.start_bytes
        grads = 0 if phase == "forward" else min(m.gradient_bytes, transient)
        other = m.buffer_bytes + m.input_bytes
        rest = transient - grads
    else:  # model states + the larger of activations and the optimizer's scratch
        phase = "optimizer" if m.temporary_bytes > m.activation_bytes else "backward"
        grads, other, rest = m.gradient_bytes, 0, max(m.activation_bytes, m.temporary_bytes)
    return {
        "weights_bytes": m.weight_bytes,
        "gradients_bytes": grads,
        "optimizer_states_bytes": m.optimizer_state_bytes,
        "master_weights_bytes": m.master_weight_bytes,
        "buffers_and_batch_bytes": other,
        "activations_and_temporaries_bytes": rest,
        "overhead_bytes": m.overhead_bytes,
        "peak_phase": phase,
    }


def breakdown_frame(est: Estimate) -> pd.DataFrame:
    """Peak memory per GPU by component, one row per method; the components sum to `total_bytes`."""
    rows = []
    for r in est.results:
        row = {"method": r.method, **_components(r), "total_bytes": r.memory.total}
        assert sum(row[c] for _, c in COMPONENTS) == row["total_bytes"], r.method
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_frame(spec: ModelSpec, setup: Setup, methods: Sequence[str], options: MethodOptions,
                field: str, values: Iterable[int]) -> pd.DataFrame:
    """Peak memory per GPU as one setup field (`seq_len` or `batch_size`) varies: long format, one row
    per (method, value)."""
    if field not in ("seq_len", "batch_size"):
        raise ValueError(f"sweep over seq_len or batch_size, not {field!r}")
    rows = []
    for v in values:
        est = estimate(spec, dataclasses.replace(setup, **{field: v}), tuple(methods), options)
        for r in est.results:
            rows.append({"method": r.method, field: v, "peak_bytes": r.memory.total,
                         "activations_bytes": r.memory.activation_bytes})
    return pd.DataFrame(rows, columns=["method", field, "peak_bytes", "activations_bytes"])


def capacity_frame(gpus: Iterable[Gpu]) -> pd.DataFrame:
    """GPU memory a training process can allocate (the lines drawn across memory plots), smallest first."""
    rows = [{"gpu": g.id, "name": g.name, "memory_bytes": g.memory_bytes, "usable_memory_bytes": g.usable_memory_bytes}
            for g in gpus]
    df = pd.DataFrame(rows, columns=["gpu", "name", "memory_bytes", "usable_memory_bytes"])
    return df.sort_values(["usable_memory_bytes", "gpu"], kind="stable").reset_index(drop=True)


def rank_frame(spec: ModelSpec, setup: Setup, options: MethodOptions, ranks: Iterable[int] = DEFAULT_RANKS,
               methods: Sequence[str] = RANKED_METHODS) -> pd.DataFrame:
    """Trainable parameters, checkpoint size and peak memory as the LoRA rank varies."""
    rows = []
    for rank in ranks:
        est = estimate(spec, setup, tuple(methods), dataclasses.replace(options, rank=rank))
        for r in est.results:
            rows.append({"method": r.method, "rank": rank, "trainable_params": r.params.trainable,
                         "checkpoint_bytes": r.checkpoint.checkpoint_bytes, "peak_bytes": r.memory.total})
    return pd.DataFrame(rows, columns=["method", "rank", "trainable_params", "checkpoint_bytes", "peak_bytes"])


def storage_frame(est: Estimate, task_counts: Iterable[int] = DEFAULT_TASK_COUNTS) -> pd.DataFrame:
    """Disk for N fine-tuned tasks, one row per (method, num_tasks): each method's per-task files
    (`adapters_bytes`), plus the one base model they all need (`total_bytes`), against N full copies of
    the model (`full_copies_bytes`; for method "full" the two are the same)."""
    rows = []
    for n in task_counts:
        for r in est.results:
            s = r.checkpoint
            full = r.method == "full"
            rows.append({"method": r.method, "num_tasks": n, "checkpoint_bytes": s.checkpoint_bytes,
                         "adapters_bytes": s.checkpoint_bytes * n,
                         "total_bytes": s.checkpoint_bytes * n + (0 if full else s.full_copy_bytes),
                         "full_copies_bytes": s.full_copy_bytes * n})
    return pd.DataFrame(rows, columns=["method", "num_tasks", "checkpoint_bytes", "adapters_bytes", "total_bytes",
                                       "full_copies_bytes"])


# ---- one model: the planner's options ---------------------------------------------------------------

PLAN_COLUMNS = ("gpu", "num_gpus", "method", "strategy", "kind", "fits", "verdict", "fits_with", "runs",
                "per_gpu_bytes", "limiting_component", "max_batch_size", "max_seq_len", "hours", "rent_usd",
                "purchase_usd")

# Fit statuses of a (method, GPU) pair, best first (the colours of the fit matrix).
FIT_STATUSES = ("fits", "fits with changes", "needs more GPUs", "does not fit")


@dataclass(frozen=True)
class PlanRow:
    """One option of the planner, as the report's tables use it."""

    gpu: str
    num_gpus: int
    method: str
    verdict: str  # "fits", "fits with" or "does not fit" (planner.Verdict)
    per_gpu_bytes: int
    strategy: str = "ddp"
    kind: str = "as asked"
    fits_with: tuple[str, ...] = ()
    limiting_component: str | None = None
    max_batch_size: int | None = None
    max_seq_len: int | None = None
    hours: float | None = None
    rent_usd: float | None = None
    purchase_usd: int | None = None

    @classmethod
    def of(cls, o: Option) -> "PlanRow":
        return cls(o.gpu.id, o.setup.gpus, o.method, o.verdict.value, o.per_gpu_bytes, o.strategy, o.kind,
                   tuple(o.remedies), o.limiting_component, o.max_batch_size, o.max_seq_len, o.hours, o.rent_usd,
                   o.purchase_usd)


@dataclass(frozen=True)
class PlanView:
    """What the report shows of a plan: its options and the assumptions they rest on."""

    rows: tuple[PlanRow, ...]
    assumptions: Mapping[str, str]

    @classmethod
    def of(cls, plan: Plan) -> "PlanView":
        from peftcalc.render.plan import plan_assumptions

        return cls(tuple(PlanRow.of(o) for o in plan.options), plan_assumptions(plan))


def plan_frame(rows: Iterable[PlanRow]) -> pd.DataFrame:
    """Every (gpu, num_gpus, method) option the planner evaluated. `verdict` is "fits", "fits with" (the changes
    in `fits_with`, joined by +) or "does not fit"; `runs` says whether the option runs at all, as asked or with
    those changes."""
    records = []
    for r in rows:
        row = {k: getattr(r, k, None) for k in PLAN_COLUMNS}
        row["fits"] = r.verdict == "fits"
        row["runs"] = r.verdict != "does not fit"
        row["fits_with"] = "+".join(r.fits_with) or None
        records.append(row)
    df = pd.DataFrame(records, columns=list(PLAN_COLUMNS))
    df["fits"] = df["fits"].astype(bool)
    df["runs"] = df["runs"].astype(bool)
    for c in ("num_gpus", "per_gpu_bytes", "max_batch_size", "max_seq_len", "purchase_usd"):
        df[c] = df[c].astype("Int64")
    for c in ("hours", "rent_usd"):
        df[c] = df[c].astype("Float64")
    return df


def fit_frame(plan: pd.DataFrame, gpus: Iterable[Gpu], methods: Sequence[str]) -> pd.DataFrame:
    """The GPU fit matrix, one row per (method, gpu) the plan covers: the verdict at the setup asked
    (`status`: fits / fits with changes / needs more GPUs / does not fit), what it needs, its peak per
    GPU and largest part, and the fewest GPUs that run it (None: none up to the planner's limit)."""
    usable = {g.id: g.usable_memory_bytes for g in gpus}
    rows = []
    for method in methods:
        for gpu_id in usable:
            sub = plan[(plan["method"] == method) & (plan["gpu"] == gpu_id)]
            if sub.empty:
                continue
            asked = sub[sub["kind"] == "as asked"]
            a = (asked if not asked.empty else sub.sort_values("num_gpus", kind="stable")).iloc[0]
            running = sub[sub["runs"]].sort_values(["num_gpus", "rent_usd"], kind="stable", na_position="last")
            if a["verdict"] == "fits":
                status = "fits"
            elif a["verdict"] == "fits with":
                status = "fits with changes"
            elif not running.empty:
                status = "needs more GPUs"
            else:
                status = "does not fit"
            best = running.iloc[0] if not running.empty else None
            rows.append({
                "method": method,
                "gpu": gpu_id,
                "status": status,
                "num_gpus_asked": int(a["num_gpus"]),
                "fits_with": a["fits_with"],
                "per_gpu_bytes": _int_or_none(a["per_gpu_bytes"]),
                "usable_memory_bytes": usable[gpu_id],
                "limiting_component": a["limiting_component"],
                "min_gpus": None if best is None else int(best["num_gpus"]),
                "min_gpus_strategy": None if best is None else best["strategy"],
            })
    cols = ["method", "gpu", "status", "num_gpus_asked", "fits_with", "per_gpu_bytes", "usable_memory_bytes",
            "limiting_component", "min_gpus", "min_gpus_strategy"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("per_gpu_bytes", "min_gpus"):
        df[c] = df[c].astype("Int64")
    return df


def cost_frame(plan: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Time and money per GPU option: for each (method, gpu), the option that runs on the fewest GPUs
    (the cheaper one on a tie), with its hours, rent and purchase price. Options without a time (the GPU
    lacks the compute dtype) are left out. Sorted by method, then rent."""
    ok = plan[plan["runs"] & plan["method"].isin(list(methods)) & plan["hours"].notna()]
    ok = ok.sort_values(["method", "gpu", "num_gpus", "rent_usd"], kind="stable", na_position="last")
    first = ok.groupby(["method", "gpu"], sort=False).head(1)
    cols = ["method", "gpu", "num_gpus", "strategy", "verdict", "fits_with", "hours", "rent_usd", "purchase_usd",
            "per_gpu_bytes"]
    df = first[cols].copy()
    order = {m: i for i, m in enumerate(methods)}
    df["_m"] = df["method"].map(order)
    df = df.sort_values(["_m", "rent_usd", "hours", "gpu"], kind="stable", na_position="last").drop(columns="_m")
    return df.reset_index(drop=True)


def _int_or_none(v: Any) -> int | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(v)


# ---- measured results -------------------------------------------------------------------------------

def layer(record: Record) -> str:
    """Which layer of truth a result comes from: traced (fake tensors), or measured on CPU or GPU."""
    if record.result.backend == "trace":
        return "traced"
    device = record.result.device.lower()
    return "measured GPU" if device.startswith(("cuda", "gpu", "rocm")) else "measured CPU"


def error_message(record: Record) -> str | None:
    """Why a run did not complete, from its record (the measured backend's detail.error)."""
    detail = record.result.detail
    msg = detail.error or ("; ".join(map(str, detail.notes)) if detail.notes else None)
    return None if not msg else str(msg).strip().splitlines()[-1][:300]


def _setup_label(s: Setup | None, nproc: int) -> str:
    if s is None:
        return "?"
    parts = [s.precision, f"b{s.batch_size}xs{s.seq_len}"]
    if s.gradient_checkpointing:
        parts.append("ckpt")
    if s.attention != "sdpa":
        parts.append(s.attention)
    parts.append(s.adamw_impl)
    if nproc > 1:
        parts.append(f"{nproc} procs ZeRO-{s.zero_stage}")
    return " ".join(parts)


RESULT_COLUMNS = ["source", "suite", "layer", "backend", "device", "status", "model", "family", "method", "precision",
                  "batch_size", "seq_len", "gradient_checkpointing", "setup", "trainable_params",
                  *[f"measured_{c}_bytes" for c in RESULT_COMPONENTS],
                  *[f"predicted_{c}_bytes" for c in RESULT_COMPONENTS],
                  "prediction", "recorded_predicted_peak_bytes", "peak_error_bytes", "peak_error_percent",
                  "recorded_peak_error_percent", "peak_phase", "step_seconds"]


def _current(record: Record) -> Bytes | None:
    """Today's prediction of a completed run; None where it cannot be rebuilt."""
    if record.result.status != "ok":
        return None
    try:
        return repredict(record).bytes
    except Exception:  # noqa: BLE001 - a run this code cannot rebuild keeps its recorded prediction
        return None


def _result_row(record: Record, current: Bytes | None) -> dict[str, Any]:
    r = record.result
    try:
        request = request_of(record)
    except PeftcalcError:
        request = None
    setup = r.setup or (request.setup if request else None)
    model = r.model.name if r.model else (request.model_label if request else None)
    family = r.model.family if r.model else _family(model)
    predicted = current or r.predicted
    row: dict[str, Any] = {
        "source": record.source, "suite": record.suite, "layer": layer(record), "backend": r.backend,
        "device": r.device, "status": r.status, "model": model, "family": family,
        "method": r.method or (request.method if request else None),
        "precision": setup.precision if setup else None, "batch_size": setup.batch_size if setup else None,
        "seq_len": setup.seq_len if setup else None,
        "gradient_checkpointing": setup.gradient_checkpointing if setup else None,
        "setup": _setup_label(setup, request.nproc if request else 1), "trainable_params": r.trainable_params,
    }
    for c in RESULT_COMPONENTS:
        row[f"measured_{c}_bytes"] = getattr(r.measured, c) if r.measured else None
        row[f"predicted_{c}_bytes"] = getattr(predicted, c) if predicted else None
    row["prediction"] = "current" if current is not None else ("recorded" if r.predicted else None)
    row["recorded_predicted_peak_bytes"] = r.predicted.peak if r.predicted else None
    mp, pp, rp = row["measured_peak_bytes"], row["predicted_peak_bytes"], row["recorded_predicted_peak_bytes"]
    row["peak_error_bytes"] = pp - mp if mp and pp is not None else None
    row["peak_error_percent"] = round(100.0 * (pp - mp) / mp, 4) if mp and pp is not None else None
    row["recorded_peak_error_percent"] = round(100.0 * (rp - mp) / mp, 4) if mp and rp is not None else None
    row["peak_phase"] = r.peak_phase
    row["step_seconds"] = r.step_seconds
    return row


def _family(name: str | None) -> str | None:
    """A catalogue model's architecture family, for failed results that name only the model."""
    from peftcalc.model.catalogue import get_model

    try:
        return get_model(name).family if name else None
    except PeftcalcError:
        return None


def results_frame(records: Iterable[Record], repredict_runs: bool = True) -> pd.DataFrame:
    """One row per result line: what ran, predicted and measured bytes per component, the peak's error
    (predicted - measured, in bytes and % of measured; None where either is missing).

    The prediction is today's analytic model's (`prediction` = "current", from peftcalc.results.predict, as
    `peftcalc validate` computes it); where the run cannot be rebuilt it is the one recorded with the result
    ("recorded"). The recorded peak stays beside it (`recorded_predicted_peak_bytes`), to show what changed
    since the results were taken."""
    rows = [_result_row(rec, _current(rec) if repredict_runs else None) for rec in records]
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for c in [c for c in RESULT_COLUMNS if c.endswith("_bytes") or c in ("trainable_params", "batch_size", "seq_len")]:
        df[c] = df[c].astype("Int64")
    df["peak_error_percent"] = df["peak_error_percent"].astype("Float64")
    df["recorded_peak_error_percent"] = df["recorded_peak_error_percent"].astype("Float64")
    return df


def compared_frame(results: pd.DataFrame) -> pd.DataFrame:
    """The results that completed and have both a prediction and a measurement of the peak."""
    ok = results[(results["status"] == "ok") & results["peak_error_percent"].notna()]
    return ok.reset_index(drop=True)


def status_frame(results: pd.DataFrame) -> pd.DataFrame:
    """How many runs each layer has, by status (ok, oom, error ...)."""
    df = results.assign(status=results["status"].fillna("unknown"))
    out = df.groupby(["layer", "status"]).size().reset_index(name="runs")
    return out.sort_values(["layer", "status"], kind="stable").reset_index(drop=True)


def failures_frame(records: Sequence[Record]) -> pd.DataFrame:
    """The runs that did not complete (oom, unsupported, error), one row per (layer, status, message):
    how many runs, which methods and models."""
    df = results_frame(records, repredict_runs=False).assign(message=[error_message(r) for r in records])
    bad = df[df["status"] != "ok"].fillna({"message": "", "model": "?", "method": "?"})
    rows = []
    for (layer, status, message), g in bad.groupby(["layer", "status", "message"], sort=True):
        rows.append({"layer": layer, "status": status, "runs": len(g),
                     "methods": ", ".join(sorted(set(g["method"].astype(str)))),
                     "models": ", ".join(sorted(set(g["model"].astype(str)))), "message": message})
    return pd.DataFrame(rows, columns=["layer", "status", "runs", "methods", "models", "message"])


def prediction_history_frame(results: pd.DataFrame) -> pd.DataFrame:
    """The peak's error with the predictions recorded when the runs were taken, and with today's model."""
    ok = compared_frame(results)
    rows = []
    for label, col in (("recorded with the results", "recorded_peak_error_percent"),
                       ("current analytic model", "peak_error_percent")):
        e = ok[col].dropna().astype(float)
        rows.append({"prediction": label, "runs": len(e),
                     "mean_abs_error_percent": round(float(e.abs().mean()), 4) if len(e) else None,
                     "max_abs_error_percent": round(float(e.abs().max()), 4) if len(e) else None,
                     "within_2_percent": int((e.abs() <= 2.0).sum())})
    return pd.DataFrame(rows, columns=["prediction", "runs", "mean_abs_error_percent", "max_abs_error_percent",
                                       "within_2_percent"])


def error_summary_frame(results: pd.DataFrame, by: str) -> pd.DataFrame:
    """The peak's error by `by` ("method" or "family"): runs, mean and worst absolute error in %, bias."""
    ok = compared_frame(results)
    rows = []
    for key, g in ok.groupby(by, sort=True):
        e = g["peak_error_percent"].astype(float)
        rows.append({by: key, "runs": len(g), "mean_abs_error_percent": round(float(e.abs().mean()), 4),
                     "max_abs_error_percent": round(float(e.abs().max()), 4),
                     "mean_error_percent": round(float(e.mean()), 4)})
    return pd.DataFrame(rows, columns=[by, "runs", "mean_abs_error_percent", "max_abs_error_percent",
                                       "mean_error_percent"])


def component_error_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Error of each predicted component against its measurement, over the compared runs."""
    ok = compared_frame(results)
    rows = []
    for c in RESULT_COMPONENTS:
        m, p = ok[f"measured_{c}_bytes"], ok[f"predicted_{c}_bytes"]
        both = m.notna() & p.notna() & (m > 0)
        if not both.any():
            continue
        e = 100.0 * (p[both].astype(float) - m[both].astype(float)) / m[both].astype(float)
        rows.append({"component": c, "runs": int(both.sum()),
                     "mean_abs_error_percent": round(float(e.abs().mean()), 4),
                     "max_abs_error_percent": round(float(e.abs().max()), 4)})
    return pd.DataFrame(rows, columns=["component", "runs", "mean_abs_error_percent", "max_abs_error_percent"])


def worst_runs_frame(results: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The `n` compared runs whose predicted peak is furthest from the measurement, worst first."""
    ok = compared_frame(results)
    ok = ok.assign(_abs=ok["peak_error_percent"].astype(float).abs())
    ok = ok.sort_values(["_abs", "source"], ascending=[False, True], kind="stable").head(n)
    cols = ["layer", "model", "family", "method", "setup", "measured_peak_bytes", "predicted_peak_bytes",
            "peak_error_bytes", "peak_error_percent", "recorded_peak_error_percent", "peak_phase", "source"]
    return ok[cols].reset_index(drop=True)


# ---- published GPU runs (peftcalc.evidence) -----------------------------------------------------------------

def published_frame(comparisons: Sequence[Any]) -> pd.DataFrame:
    """One row per published record: its group (whose model code), framework, quantity, confidence, the
    measured and predicted bytes of that quantity, the error, whether the gate counts it, why not predicted."""
    rows = [{"id": c.record.id, "group": c.record.group, "framework": c.record.framework,
             "method": c.record.method, "quantity": c.record.quantity, "confidence": c.record.confidence,
             "gpus": c.record.gpus or 1, "measured_bytes": c.measured_bytes, "predicted_bytes": c.predicted_bytes,
             "compared_with": c.compared_with, "error_percent": c.error_percent, "gated": c.gated,
             "not_predicted": c.reason, "flags": "; ".join(c.flags)} for c in comparisons]
    return pd.DataFrame(rows)


def published_summary_frame(published: pd.DataFrame) -> pd.DataFrame:
    """Per group and confidence: records, predicted, median |error|, share within 10 %, worst |error|."""
    rows = []
    for (group, conf), g in published.groupby(["group", "confidence"], sort=True):
        err = g["error_percent"].dropna().abs()
        rows.append({"group": group, "confidence": conf, "records": len(g), "predicted": len(err),
                     "median_abs_error_percent": err.median() if len(err) else None,
                     "within_10_percent": (100.0 * (err <= 10).mean()) if len(err) else None,
                     "max_abs_error_percent": err.max() if len(err) else None})
    return pd.DataFrame(rows)


def not_predicted_frame(published: pd.DataFrame) -> pd.DataFrame:
    """The records with no prediction, counted by reason."""
    miss = published[published["not_predicted"].notna()]
    out = miss.groupby("not_predicted").agg(records=("id", "size"), groups=("group", lambda s: ", ".join(sorted(set(s)))))
    return out.reset_index().sort_values("records", ascending=False, kind="stable").reset_index(drop=True)
