"""Time checked against published throughput: each record of bench/published/throughput/ predicted with the step-time
model (hardware/steptime.py: the replayed step's kernels at the GPU's measured rates) and compared with the metric its
source printed.

A record becomes a prediction when peftcalc can model what it ran (throughput_mapping.py: the record and its source's
configs at the cited commit). Records it cannot model are listed with the reason, never dropped silently: float8
matmuls, context parallelism, PEFT methods peftcalc lacks, unstated lengths, a paged optimizer whose states exceed the
GPU (paging over PCIe is not modelled), and published rates no run on that GPU can reach (more matmul and attention
FLOP/s than the GPU's measured matmul rate: a misread table or another GPU).

The error is that of the predicted TIME: (predicted time / published time - 1) x 100; for tokens/s it is
published / predicted - 1. Nothing in the model is fitted to these records: the rates are the GPUs' published
measurements and the kernels the replayed step's (the README says how the validation would be held out if a
constant ever were).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from peftcalc.compute import training_flops_per_seq
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import adapt
from peftcalc.hardware.compute_time import phase_time
from peftcalc.hardware.nodes import node_for
from peftcalc.hardware.rates import rates_for
from peftcalc.hardware.steptime import StepTime, step_time
from peftcalc.kernels import step_kernels
from peftcalc.memory import model_states
from peftcalc.methods import make_method
from peftcalc.methods.base import Adaptation
from peftcalc.optim import get_optimizer
from peftcalc.throughput_mapping import Case, case_of

THROUGHPUT_DIR = Path(__file__).resolve().parents[1] / "bench" / "published" / "throughput"


@dataclass(frozen=True)
class Comparison:
    id: str
    source: str
    metric: str
    published: float
    predicted: float | None
    error_percent: float | None  # of the predicted time
    excluded: str | None  # why no prediction
    note: str = ""
    mfu: float | None = None  # the utilisation the predicted time implies (model FLOPs / time / dense peak)


def load_records(folder: Path = THROUGHPUT_DIR) -> list[dict[str, Any]]:
    files = sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else [Path(folder)]
    if not files:
        raise PeftcalcError(f"no published throughput records (*.jsonl) in {folder}")
    out = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append({**json.loads(line), "_file": f.stem})
                except json.JSONDecodeError as e:
                    raise PeftcalcError(f"{f}:{n}: not valid JSON: {e.msg}") from None
    return out


def adaptation_of(case: Case) -> Adaptation:
    return adapt(case.spec, make_method(case.method, case.options))


def step_of(case: Case) -> StepTime:
    """One optimizer step of the record's run, with the source's selective recomputation added."""
    adaptation = adaptation_of(case)
    flops = training_flops_per_seq(adaptation, case.setup.seq_len, case.setup.gradient_checkpointing)
    step = step_time(adaptation, case.setup, node_for(case.gpu), case.gpu, flops, power_watts=case.power_watts)
    extra = selective_recompute_seconds(case, adaptation)
    if not extra:
        return step
    parts = {**step.compute_parts, "selective recompute": extra}
    return StepTime(step.compute_seconds + extra, step.communication_seconds, step.offload_seconds,
                    step.communication_total_seconds, step.offload_total_seconds, step.bubble_seconds,
                    step.optimizer_seconds, step.tokens_per_step, step.volume, step.links, parts,
                    step.mfu * step.compute_seconds / (step.compute_seconds + extra), step.rates_basis)


def selective_recompute_seconds(case: Case, adaptation: Adaptation) -> float:
    """torchtitan's op-level policy recomputes some projections and every pointwise operator of each block in
    backward: those linears' forward FLOPs at the matmul rate, and the forward's memory-bound traffic again."""
    if not case.recomputed:
        return 0.0
    setup = case.setup
    rates = rates_for(case.gpu, setup.recipe.compute_dtype, case.power_watts)
    assert rates is not None
    fwd = phase_time(step_kernels(adaptation, setup).forward, rates, setup.compile)
    params = sum(lin.weight_params * lin.count for lin in case.spec.linears
                 if lin.name.split(".")[-1] in case.recomputed)
    flops = 2 * params * setup.batch_size * setup.seq_len
    share = setup.tensor_parallel * setup.pipeline_parallel
    return setup.gradient_accumulation * (flops / rates.matmul_flops_per_s + fwd.memory_seconds) / share


def predict(case: Case) -> tuple[float, StepTime]:
    """The record's metric as peftcalc predicts it (tokens/s per GPU, or seconds of the steps), and the step."""
    step = step_of(case)
    if case.metric == "tokens_per_second_per_gpu":
        return step.tokens_per_step / step.step_seconds / case.setup.num_gpus, step
    assert case.steps is not None
    return case.steps * step.step_seconds, step


def implausible(case: Case, adaptation: Adaptation) -> str | None:
    """Why the published figure cannot be this run on this GPU, if it cannot: it needs more matmul and attention
    FLOP/s than the GPU's measured matmul rate (the best any shape reaches), or its paged optimizer pages."""
    opt = get_optimizer(case.setup.optimizer)
    states = model_states(adaptation, case.setup.recipe, case.setup.optimizer)
    held = states.weight_bytes + states.optimizer_state_bytes
    if opt.paged and held > case.gpu.usable_memory_bytes:
        return (f"{case.setup.optimizer}'s states and the weights ({held / 1e9:,.1f} GB) exceed the {case.gpu.id}'s "
                "memory: paging them over PCIe every step is not modelled")
    if case.metric != "tokens_per_second_per_gpu":
        return None
    k = step_kernels(adaptation, case.setup)
    executed = sum(p.gemm_flops + p.attention_flops for p in k.phases)
    per_token = executed / (case.setup.batch_size * case.setup.seq_len) / (case.setup.tensor_parallel
                                                                            * case.setup.pipeline_parallel)
    rates = rates_for(case.gpu, case.setup.recipe.compute_dtype, case.power_watts)
    need = per_token * case.published
    if rates is not None and need > rates.matmul_flops_per_s:
        return (f"the published rate needs {need / 1e12:,.0f} TFLOP/s of matmuls and attention per GPU, above the "
                f"{case.gpu.id}'s measured matmul rate ({rates.matmul_flops_per_s / 1e12:,.0f}): not this run on "
                "one such GPU")
    return None


def compare(record: Mapping[str, Any]) -> Comparison:
    base = dict(id=record["id"], source=record["_file"], metric=record["metric"], published=float(record["value"]))
    try:
        case = case_of(record)
        why = implausible(case, adaptation_of(case))
        if why:
            return Comparison(**base, predicted=None, error_percent=None, excluded=why)
        predicted, step = predict(case)
    except PeftcalcError as e:
        return Comparison(**base, predicted=None, error_percent=None, excluded=str(e))
    if case.metric == "tokens_per_second_per_gpu":
        error = 100.0 * (case.published / predicted - 1)
    else:
        error = 100.0 * (predicted / case.published - 1)
    return Comparison(**base, predicted=predicted, error_percent=error, excluded=None,
                      note="; ".join(case.assumptions), mfu=step.mfu)


@dataclass(frozen=True)
class Summary:
    points: int
    excluded: int
    median_abs_percent: float | None
    mean_abs_percent: float | None
    median_signed_percent: float | None  # below 0: the model predicts faster than the sources ran
    by_source: dict[str, float]  # median |error| per source
    worst: tuple[Comparison, ...]
    # source -> (time factor fitted on the other sources, this source's median |error| with it): what calibrating
    # one constant would buy, held out by source; the model does not apply it
    held_out: dict[str, tuple[float, float]]


def held_out_by_source(done: list[Comparison]) -> dict[str, tuple[float, float]]:
    """Leave one source out: the median ratio published / predicted time over the other sources' records, applied to
    this source's predictions; its median |error| then."""
    out = {}
    for source in sorted({c.source for c in done}):
        rest = [1 / (1 + c.error_percent / 100) for c in done if c.source != source]  # type: ignore[operator]
        if not rest:
            continue
        k = statistics.median(rest)
        mine = [abs(((1 + c.error_percent / 100) * k - 1) * 100) for c in done if c.source == source]  # type: ignore
        out[source] = (k, statistics.median(mine))
    return out


def summarize(comparisons: list[Comparison], worst: int = 5) -> Summary:
    done = [c for c in comparisons if c.error_percent is not None]
    errors = [abs(c.error_percent) for c in done]  # type: ignore[arg-type]
    sources = sorted({c.source for c in done})
    by_source = {s: statistics.median(abs(c.error_percent) for c in done if c.source == s)  # type: ignore[arg-type]
                 for s in sources}
    ordered = sorted(done, key=lambda c: -abs(c.error_percent))  # type: ignore[arg-type]
    signed = [c.error_percent for c in done]
    return Summary(len(done), len(comparisons) - len(done), statistics.median(errors) if errors else None,
                   statistics.fmean(errors) if errors else None,
                   statistics.median(signed) if signed else None,  # type: ignore[type-var]
                   by_source, tuple(ordered[:worst]), held_out_by_source(done))
