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
import time
import warnings
from dataclasses import replace
from typing import Any, Hashable, Mapping, Sequence

import torch
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
from peftcalc.profile.extrapolate import Moment, Step, extrapolate
from peftcalc.profile.fit import FitError, fit
from peftcalc.profile.layout import Layout, config_layer_types, layer_count_key, layouts, reduce_config
from peftcalc.profile.plan import Plan, plan
from peftcalc.profile.store import Profile, Regime
from peftcalc.setup import Setup
from peftcalc.stepsim.poly import evaluate


def model_config(spec: ModelSpec) -> dict[str, Any]:
    """The config the model is built from: the derived inventory's (class defaults filled in), else the config.json."""
    derivation = getattr(spec, "derivation", None)
    return dict(derivation.config if derivation is not None else spec.hf_config)


def layer_types(spec: ModelSpec, cfg: Mapping[str, Any]) -> list[Hashable]:
    """Each layer's type: what the config says about it and which weight templates it has."""
    count = cfg[layer_count_key(cfg)]
    weights: list[set] = [set() for _ in range(count)]
    for group in (*spec.linears, *spec.others):
        if "{i}" not in group.name:
            continue
        shape = (group.out_features, group.in_features) if hasattr(group, "in_features") else group.shape
        for i in (getattr(group, "layers", ()) or range(group.count)):
            if i < count:
                weights[i].add((group.name, shape))
    return [(c, frozenset(w)) for c, w in zip(config_layer_types(cfg, count), weights)]


def reduced_spec(spec: ModelSpec, cfg: Mapping[str, Any], layout: Layout, types: Sequence[Hashable]) -> ModelSpec:
    """The spec of the model with only the layout's layers, checked to have the same layer types."""
    small_cfg = reduce_config(cfg, layout)
    name = f"{spec.name} (layers {','.join(map(str, layout.selected))} of {layout.real_count})"
    if getattr(spec, "derivation", None) is not None:
        from peftcalc.model.derived import spec_from_derived_config  # the models' derived inventories

        small = spec_from_derived_config(small_cfg, spec, name)
    else:
        from peftcalc.model.hf_config import spec_from_config

        small = spec_from_config(small_cfg, name, spec.source)
    got = layer_types(small, small_cfg)
    want = [types[r] for r in layout.selected]
    if [g[1] for g in got] != [w[1] for w in want]:
        raise PeftcalcError(f"{spec.name}: leaving layers out of the config changes the other layers' weights; "
                            "its activations cannot be profiled this way")
    return small


def _step_timeline(prep: Any, stack: torch.nn.ModuleList) -> Timeline:
    """One forward and backward of the prepared model, recorded moment by moment (see timeline.py)."""
    meter = TimelineMeter(len(stack))
    tags = LayerTags(stack, meter)
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
            tl.gradients = unique_storage_bytes([p.grad for p in prep.model.parameters() if p.grad is not None])
            tl.layer_gradients = layer_gradient_bytes(stack)
            prep.optimizer.zero_grad(set_to_none=True)
            meter.phase(None)
    finally:
        gc.enable()
        tags.remove()
    return tl


def trace_timelines(spec: ModelSpec, method: Method, setup: Setup, sizes: Sequence[tuple[int, int]]
                    ) -> list[Timeline]:
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
                out.append(_step_timeline(prep, stack))
    return out


def _signature(tl: Timeline) -> list[tuple]:
    return [(m.phase, m.layer, m.states, m.op) for m in tl.moments]


def fit_step(grid: Sequence[Timeline], batches: Sequence[int], seqs: Sequence[int]) -> Step:
    """The step as polynomials, from timelines at batches x seqs (row-major)."""
    sig = _signature(grid[0])
    if any(_signature(t) != sig for t in grid[1:]):
        raise FitError("the traced steps at different sizes differ in their operations (a size-dependent code "
                       "path, e.g. a loop over sequence chunks)")
    rows = len(batches)

    def poly(get, what: str):
        vals = [get(t) for t in grid]
        return fit(batches, seqs, [vals[i * 3:(i + 1) * 3] for i in range(rows)], what)

    moments = tuple(Moment(m.phase, m.layer, m.states, poly(lambda t, i=i: t.moments[i].live, m.op), m.op)
                    for i, m in enumerate(grid[0].moments))
    count = len(grid[0].layer_gradients)
    held = {s: [poly(lambda t, s=s, k=k: t.held[s][k], f"held {s}") for k in range(count)]
            for s in grid[0].held}
    return Step(moments, held, poly(lambda t: t.after_forward, "after forward"), poly(lambda t: t.gradients, "grads"),
                tuple(poly(lambda t, k=k: t.layer_gradients[k], "layer grads") for k in range(count)))


def agrees(step: Step, tl: Timeline, batch: int, seq: int) -> bool:
    """The fitted step predicts this traced one exactly."""
    v = {"B": batch, "S": seq}
    if [(m.phase, m.layer, m.states, m.op) for m in step.moments] != _signature(tl):
        return False
    return (all(evaluate(m.live, v) == t.live for m, t in zip(step.moments, tl.moments))
            and evaluate(step.after_forward, v) == tl.after_forward
            and all(evaluate(p, v) == x for s in step.held for p, x in zip(step.held[s], tl.held[s])))


def traced_step(spec: ModelSpec, method: Method, setup: Setup, p: Plan, check: bool) -> tuple[Step, Regime]:
    """The fitted step of `spec`, and the regime the checks allow."""
    grid = [(b, s) for b in p.batches for s in p.seqs]
    extra = [p.check] + ([x for x in (p.widen_batch, p.widen_residue) if x] if check else [])
    tls = trace_timelines(spec, method, setup, grid + (extra if check else []))
    step = fit_step(tls[:len(grid)], p.batches, p.seqs)
    regime = p.regime
    if check:
        checks = dict(zip(extra, tls[len(grid):]))
        if not agrees(step, checks[p.check], *p.check):
            raise FitError(f"the fitted profile does not reproduce the step traced at batch {p.check[0]} x "
                           f"{p.check[1]} tokens")
        if p.widen_batch and agrees(step, checks[p.widen_batch], *p.widen_batch):
            regime = replace(regime, batch="any")
        if p.widen_residue and agrees(step, checks[p.widen_residue], *p.widen_residue):
            regime = replace(regime, residue=None)
    return step, regime


def trace_profile(spec: ModelSpec, method: Method, setup: Setup) -> Profile:
    """The profile of `spec` adapted by `method` for `setup`'s regime of sizes (see the module docstring)."""
    t0 = time.perf_counter()
    if spec.arch.kind != "decoder":
        raise PeftcalcError(f"{spec.name}: traced profiles cover decoder-only models (this is {spec.arch.kind})")
    cfg = model_config(spec)
    types = layer_types(spec, cfg)
    la, lb = layouts(types)
    p = plan(cfg, setup.batch_size, setup.seq_len)
    small = replace(setup, num_gpus=1, zero_stage=0, offload=False, offload_params=False)
    step_a, regime = traced_step(reduced_spec(spec, cfg, la, types), method, small, p, check=True)
    step_b = step_a if lb == la else traced_step(reduced_spec(spec, cfg, lb, types), method, small, p, False)[0]
    ex = extrapolate(step_a, step_b, la, lb, types)
    source = (f"traced: layers {list(la.selected)} and {list(lb.selected)} of {la.real_count}, batches "
              f"{list(p.batches)} x sequences {list(p.seqs)}, torch {torch.__version__}; "
              f"{time.perf_counter() - t0:.1f} s")
    return Profile(regime, ex.after_forward, ex.forward_peaks, ex.backward_peaks, ex.gradients, source)
