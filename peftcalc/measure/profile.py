"""Trace a model's step at a few small layer counts and sizes, and fit the profile of its activations.

The traced models keep the real model's first and last layers and one middle layer of each type
(peftcalc/profile/layout.py), built from the real config with the other layers left out; the step is the one
`peftcalc measure --backend trace` runs (the real transformers + peft code on fake tensors), recorded moment by
moment with every storage attributed to its layer (timeline.py). One model per layout is built and prepared
(optimizer states and all) once; each size is one forward and backward on it. The fit (profile/fit.py) and the
extrapolation over the real layers (profile/extrapolate.py) are plain arithmetic; both are checked here against
steps not used for fitting, and the profile is refused (`FitError`) when they disagree.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Hashable, Mapping, Sequence

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode

from peftcalc.errors import PeftcalcError
from peftcalc.measure.adapted import build_adapted
from peftcalc.measure.meter import unique_storage_bytes
from peftcalc.measure.step import (_param_and_buffer_tensors, _warm_up, make_inputs, prepare_training,
                                   stray_tensors)
from peftcalc.measure.timeline import LayerTags, Timeline, TimelineMeter, find_layer_stack, layer_gradient_bytes
from peftcalc.measure.trace import fakeify
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.profile.key import model_config
from peftcalc.profile.extrapolate import Moment, Step, extrapolate
from peftcalc.profile.fit import FitError, fit
from peftcalc.profile.layout import Layout, config_layer_types, layer_count, layouts, reduce_config
from peftcalc.profile.plan import Plan, plan
from peftcalc.profile.store import Profile, Regime
from peftcalc.setup import Setup
from peftcalc.stepsim.poly import evaluate


def layer_types(spec: ModelSpec, cfg: Mapping[str, Any]) -> list[Hashable]:
    """Each layer's type: what the config says about it and which weight templates it has."""
    count = layer_count(cfg)
    weights: list[set] = [set() for _ in range(count)]
    for group in (*spec.linears, *spec.others):
        if "{i}" not in group.name:
            continue
        shape = (group.out_features, group.in_features) if hasattr(group, "in_features") else group.shape
        for i in (getattr(group, "layers", ()) or range(group.count)):
            if i < count:
                weights[i].add((group.name, shape))
    return [(c, frozenset(w)) for c, w in zip(config_layer_types(cfg, count), weights)]


def spec_of_config(spec: ModelSpec, cfg: dict[str, Any], name: str) -> ModelSpec:
    """The spec of another config of the same architecture, built the way `spec` was."""
    if getattr(spec, "derivation", None) is not None:
        from peftcalc.model.derived import spec_from_derived_config  # the models' derived inventories

        return spec_from_derived_config(cfg, spec, name)
    from peftcalc.model.hf_config import spec_from_config

    return spec_from_config(cfg, name, spec.source)


def reduced_spec(spec: ModelSpec, cfg: Mapping[str, Any], layout: Layout, types: Sequence[Hashable]) -> ModelSpec:
    """The spec of the model with only the layout's layers, checked to have the same layer types."""
    small_cfg = reduce_config(cfg, layout)
    name = f"{spec.name} (layers {','.join(map(str, layout.selected))} of {layout.real_count})"
    small = spec_of_config(spec, small_cfg, name)
    got = layer_types(small, small_cfg)
    want = [types[r] for r in layout.selected]
    if [g[1] for g in got] != [w[1] for w in want]:
        raise PeftcalcError(f"{spec.name}: leaving layers out of the config changes the other layers' weights; "
                            "its activations cannot be profiled this way")
    return small


def _step_timeline(prep: Any, stack: torch.nn.ModuleList, accumulating: bool) -> Timeline:
    """One forward and backward of the prepared model, recorded moment by moment (see timeline.py).
    `accumulating`: every trainable parameter holds a gradient before the step (a later micro-batch), which the
    backward adds into in place."""
    if accumulating:
        with torch.no_grad():
            for p in prep.trainable:
                p.grad = torch.zeros_like(p)
    meter = TimelineMeter(len(stack))
    tags = LayerTags(stack, meter)
    meter.track_all([p.grad for p in prep.trainable if p.grad is not None])
    meter.track_all(_param_and_buffer_tensors(prep.model))
    meter.track_all(stray_tensors(prep.model))
    meter.track_all(prep.master_weights)
    meter.track_all(prep.inputs.values())
    gc.disable()  # frees happen where reference counting puts them, the same at every size (and a full
    # collection per step would cost more than the step)
    try:
        with meter:
            meter.start_recording()
            meter.phase("forward")
            loss = prep.forward_loss()
            meter.start_backward(meter.current)
            loss.backward()
            del loss
            meter.end_backward()
            tl = meter.timeline
            if accumulating:  # the gradients were there before: nothing new to count
                tl.gradients, tl.layer_gradients = 0, [0] * len(stack)
            else:
                tl.gradients = unique_storage_bytes([p.grad for p in prep.model.parameters() if p.grad is not None])
                tl.layer_gradients = layer_gradient_bytes(stack)
            prep.optimizer.zero_grad(set_to_none=True)
            meter.phase(None)
    finally:
        gc.enable()
        tags.remove()
    return tl


def trace_timelines(spec: ModelSpec, method: Method, setup: Setup, sizes: Sequence[tuple[int, int]],
                    accumulating: bool = False) -> list[Timeline]:
    """The timelines of `spec`'s step at each (batch, seq) of `sizes`, on one prepared model."""
    first = replace(setup, batch_size=sizes[0][0], seq_len=sizes[0][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, notes = build_adapted(spec, method, first, device="meta")
        out = []
        with FakeTensorMode(allow_non_fake_inputs=False):
            fakeify(model, "cpu")
            prep = prepare_training(model, spec, first, "cpu", notes)
            stack = find_layer_stack(prep.model, spec.arch.num_layers)
            _warm_up(prep, "optimizer")
            for batch, seq in sizes:
                prep.inputs = make_inputs(spec, replace(setup, batch_size=batch, seq_len=seq), "cpu")
                out.append(_step_timeline(prep, stack, accumulating))
    return out


LOOP_MARGIN = 3  # loop periods kept off the aligned ends of a run with a size-dependent loop
COLLAPSED = "the highest moment of a loop over sequence chunks"


def _signature(moments: Sequence[Any]) -> list[tuple]:
    return [(m.phase, m.layer, m.states, m.op) for m in moments]


def _runs(moments: Sequence[Any]) -> list[list[Any]]:
    """Consecutive moments of one phase and layer."""
    runs: list[list[Any]] = []
    for m in moments:
        if runs and (runs[-1][0].phase, runs[-1][0].layer) == (m.phase, m.layer):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


@dataclass(frozen=True)
class RunShape:
    """How one run of moments (one layer's forward or backward) lines up across sizes: its first `prefix` and last
    `suffix` moments run the same operations at every size; between them, if anything, a loop whose length
    depends on the sequence (chunked linear attention), kept as its highest moment ("max"), or left out when
    another moment of the run is higher at every size ("dominated")."""

    prefix: int
    suffix: int
    middle: str  # "" (nothing between), "max" or "dominated"


def _common(seqs: Sequence[Sequence[tuple]], reverse: bool) -> int:
    n = min(len(x) for x in seqs)
    k = 0
    while k < n and all((x[-1 - k] if reverse else x[k]) == (seqs[0][-1 - k] if reverse else seqs[0][k]) for x in seqs):
        k += 1
    return k


def run_shapes(grid: Sequence[Timeline]) -> list[RunShape]:
    runs = [_runs(t.moments) for t in grid]
    if any([(r[0].phase, r[0].layer, r[0].states) for r in rs] !=
           [(r[0].phase, r[0].layer, r[0].states) for r in runs[0]] for rs in runs[1:]):
        raise FitError("the traced steps at different sizes run their layers differently")
    shapes = []
    for i in range(len(runs[0])):
        sigs = [_signature(rs[i]) for rs in runs]
        if all(x == sigs[0] for x in sigs):
            shapes.append(RunShape(len(sigs[0]), 0, ""))
            continue
        shortest = min(len(x) for x in sigs)
        # The loop's iterations repeat the same operations, so the common prefix and suffix reach into it; its
        # first and last iterations differ with the number of chunks, so they are kept off the aligned ends
        # (a few loop periods: the gcd of how much longer the runs of longer sequences are).
        period = math.gcd(*[len(x) - shortest for x in sigs])
        p = max(0, min(_common(sigs, False), shortest - 1) - LOOP_MARGIN * period)
        q = max(0, min(_common(sigs, True), shortest - 1 - p) - LOOP_MARGIN * period)
        outer = [max([m.live for m in rs[i][:p] + rs[i][len(rs[i]) - q:]], default=0) for rs in runs]
        inner = [max(m.live for m in rs[i][p:len(rs[i]) - q]) for rs in runs]
        shapes.append(RunShape(p, q, "dominated" if all(x < y for x, y in zip(inner, outer)) else "max"))
    return shapes


def align(tl: Timeline, shapes: Sequence[RunShape]) -> list[tuple[Any, int]] | None:
    """The timeline's moments as `shapes` line them up, as (moment, live); None if it does not fit them."""
    runs = _runs(tl.moments)
    if len(runs) != len(shapes):
        return None
    out: list[tuple[Any, int]] = []
    for run, sh in zip(runs, shapes):
        if not sh.middle:
            out.extend((m, m.live) for m in run)
            continue
        head, mid, tail = run[:sh.prefix], run[sh.prefix:len(run) - sh.suffix], run[len(run) - sh.suffix:]
        if not mid:
            return None
        out.extend((m, m.live) for m in head)
        top = max(mid, key=lambda m: m.live)
        if sh.middle == "max":
            out.append((replace(top, op=COLLAPSED), top.live))
        elif top.live >= max([m.live for m in head + tail], default=0):
            return None
        out.extend((m, m.live) for m in tail)
    return out


def fit_step(grid: Sequence[Timeline], batches: Sequence[int], seqs: Sequence[int]
             ) -> tuple[Step, list[RunShape]]:
    """The step as polynomials, from timelines at batches x seqs (row-major), and how its runs line up."""
    shapes = run_shapes(grid)
    moments = [align(t, shapes) for t in grid]
    if any(m is None or _signature([x for x, _ in m]) != _signature([x for x, _ in moments[0]]) for m in moments):
        raise FitError("the traced steps at different sizes do not line up operation by operation")
    rows = len(batches)

    def poly(vals: Sequence[int], what: str):
        return fit(batches, seqs, [vals[i * 3:(i + 1) * 3] for i in range(rows)], what)

    fitted = tuple(Moment(m.phase, m.layer, m.states, poly([ms[i][1] for ms in moments], m.op), m.op)
                   for i, (m, _) in enumerate(moments[0]))
    count = len(grid[0].layer_gradients)
    held = {s: [poly([t.held[s][k] for t in grid], f"held {s}") for k in range(count)] for s in grid[0].held}
    step = Step(fitted, held, poly([t.after_forward for t in grid], "after forward"),
                poly([t.gradients for t in grid], "gradients"),
                tuple(poly([t.layer_gradients[k] for t in grid], "layer gradients") for k in range(count)))
    return step, shapes


def agrees(step: Step, shapes: Sequence[RunShape], tl: Timeline, batch: int, seq: int) -> bool:
    """The fitted step predicts this traced one exactly, moment by moment as `shapes` line them up."""
    v = {"B": batch, "S": seq}
    mine = align(tl, shapes)
    if mine is None or _signature([m for m, _ in mine]) != _signature(step.moments):
        return False
    return (all(evaluate(a.live, v) == live for a, (_, live) in zip(step.moments, mine))
            and evaluate(step.after_forward, v) == tl.after_forward
            and all(evaluate(p, v) == x for s in step.held for p, x in zip(step.held[s], tl.held[s])))


def traced_step(spec: ModelSpec, method: Method, setup: Setup, p: Plan, check: bool, accumulating: bool = False
                ) -> tuple[Step, Regime]:
    """The fitted step of `spec`, and the regime the checks allow."""
    grid = [(b, s) for b in p.batches for s in p.seqs]
    extra = [p.check] + ([x for x in (p.widen_batch, p.widen_residue) if x] if check else [])
    tls = trace_timelines(spec, method, setup, grid + (extra if check else []), accumulating)
    step, shapes = fit_step(tls[:len(grid)], p.batches, p.seqs)
    regime = p.regime
    if check:
        checks = dict(zip(extra, tls[len(grid):]))
        if not agrees(step, shapes, checks[p.check], *p.check):
            raise FitError(f"the fitted profile does not reproduce the step traced at batch {p.check[0]} x "
                           f"{p.check[1]} tokens")
        if p.widen_batch and agrees(step, shapes, checks[p.widen_batch], *p.widen_batch):
            regime = replace(regime, batch="any")
        if p.widen_residue and agrees(step, shapes, checks[p.widen_residue], *p.widen_residue):
            regime = replace(regime, residue=None)
    return step, regime


def supports_sdpa(spec: ModelSpec) -> bool:
    """The transformers class of this model has an sdpa attention (gpt-oss's sinks need eager, for one)."""
    from peftcalc.measure.hf_model import AUTO_CLASS, hf_config

    cfg = hf_config(spec)
    try:
        cls = AUTO_CLASS[spec.arch.kind]._model_mapping[type(cfg)]
    except KeyError:
        return True
    return bool(getattr(cls, "_supports_sdpa", True))


def trace_profile(spec: ModelSpec, method: Method, setup: Setup, accumulating: bool = False) -> Profile:
    """The profile of `spec` adapted by `method` for `setup`'s regime of sizes (see the module docstring);
    `accumulating`: of a later micro-batch of gradient accumulation."""
    t0 = time.perf_counter()
    if spec.arch.kind != "decoder":
        raise PeftcalcError(f"{spec.name}: traced profiles cover decoder-only models (this is {spec.arch.kind})")
    cfg = dict(model_config(spec))
    types = layer_types(spec, cfg)
    la, lb = layouts(types)
    p = plan(cfg, setup.batch_size, setup.seq_len)
    small = replace(setup, num_gpus=1, zero_stage=0, offload=False, offload_params=False)
    note = ""
    if setup.attention == "sdpa" and not supports_sdpa(spec):
        small, note = replace(small, attention="eager"), (f"{spec.family} has no sdpa attention in transformers "
                                                         f"{transformers.__version__}: traced with eager, its default; ")
    step_a, regime = traced_step(reduced_spec(spec, cfg, la, types), method, small, p, True, accumulating)
    step_b = step_a if lb == la else traced_step(reduced_spec(spec, cfg, lb, types), method, small, p, False,
                                                 accumulating)[0]
    ex = extrapolate(step_a, step_b, la, lb, types)
    source = (f"{note}traced: layers {list(la.selected)} and {list(lb.selected)} of {la.real_count}, batches "
              f"{list(p.batches)} x sequences {list(p.seqs)}, torch {torch.__version__}; "
              f"{time.perf_counter() - t0:.1f} s")
    return Profile(regime, ex.after_forward, ex.forward_peaks, ex.backward_peaks, ex.gradients, source)
