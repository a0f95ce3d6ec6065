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

from dataclasses import replace
from typing import Any, Hashable, Mapping, Sequence

import torch
import transformers

from peftcalc.errors import PeftcalcError
from peftcalc.measure.tracer import Tracer
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.profile.key import model_config
from peftcalc.profile.align import agrees, fit_step
from peftcalc.profile.extrapolate import extrapolate
from peftcalc.profile.fit import FitError
from peftcalc.profile.layout import Layout, layer_types, layouts, reduce_config
from peftcalc.profile.plan import Plan, plan
from peftcalc.profile.step import Step, Timeline
from peftcalc.profile.store import Profile, Regime
from peftcalc.setup import Setup
from peftcalc.stepsim.poly import evaluate


def spec_of_config(spec: ModelSpec, cfg: dict[str, Any], name: str) -> ModelSpec:
    """The spec of another config of the same architecture, built the way `spec` was (a hand-written family's
    builder, or the derived inventory of the config transformers built, in the same scope)."""
    from peftcalc.model.hf_config import spec_from_config

    derivation = getattr(spec, "derivation", None)
    if derivation is None:
        return spec_from_config(cfg, name, spec.source)
    if derivation.scope != "text" and derivation.multimodal:
        raise PeftcalcError(f"{spec.name}: traced profiles cover the language model (the default, text-only scope); "
                            "the whole multimodal model is not profiled yet")
    return spec_from_config(cfg, name, spec.source, derivation.scope)


def reduced_spec(spec: ModelSpec, cfg: Mapping[str, Any], layout: Layout, types: Sequence[Hashable],
                 method: Method, checkpointing: bool) -> ModelSpec:
    """The spec of the model with only the layout's layers, checked to have the same layer types (weights,
    what the method trains in each, whether its input needs a gradient)."""
    small_cfg = reduce_config(cfg, layout)
    name = f"{spec.name} (layers {','.join(map(str, layout.selected))} of {layout.real_count})"
    small = spec_of_config(spec, small_cfg, name)
    got = [t[1:] for t in layer_types(small, small_cfg, method.adapt(small), checkpointing)]
    if got != [types[r][1:] for r in layout.selected]:
        raise PeftcalcError(f"{spec.name}: leaving layers out of the config changes the other layers' weights or "
                            "what the method trains in them; its activations cannot be profiled this way")
    return small


def fitted_step(t: Tracer, p: Plan, check: bool) -> tuple[Step, Regime]:
    """The step of the tracer's model fitted on the plan's grid, and the regime the checks allow: a step at another
    residue of the sequence length (when it agrees, the fit holds for every length, and its form is checked off
    the grid), else one more in the same residue class; and one at batch 1 (when it agrees, every batch)."""
    step, shapes = fit_step([t.step(b, s) for b in p.batches for s in p.seqs], p.batches, p.seqs)
    regime = p.regime
    if not check:
        return step, regime
    if p.widen_residue and agrees(step, shapes, t.step(*p.widen_residue), *p.widen_residue):
        regime = replace(regime, residue=None)
    elif not agrees(step, shapes, t.step(*p.check), *p.check):
        raise FitError(f"the fitted profile does not reproduce the step traced at batch {p.check[0]} x "
                       f"{p.check[1]} tokens")
    if p.widen_batch and agrees(step, shapes, t.step(*p.widen_batch), *p.widen_batch):
        regime = replace(regime, batch="any")
    return step, regime


def _one_layout_predicts(step_a: Step, la: Layout, lb: Layout, types: Sequence[Hashable], tl: Timeline,
                         size: tuple[int, int]) -> bool:
    """Layout a's step, extrapolated to layout b's layers with nothing outside the layers growing with their
    number, predicts the step traced on layout b exactly (after forward, both peaks, gradients)."""
    inside = Layout(tuple(k for k, r in enumerate(lb.selected) if r in la.selected), lb.count)
    ex = extrapolate(step_a, step_a, inside, inside, [types[r] for r in lb.selected])
    v = {"B": size[0], "S": size[1]}
    peak = {ph: max(m.live for m in tl.moments if m.phase == ph) for ph in ("forward", "backward")}
    return (evaluate(ex.after_forward, v) == tl.after_forward and evaluate(ex.gradients, v) == tl.gradients
            and max(evaluate(x, v) for x in ex.forward_peaks) == peak["forward"]
            and max(evaluate(x, v) for x in ex.backward_peaks) == peak["backward"])


def supports_sdpa(spec: ModelSpec) -> bool:
    """The transformers class of this model has an sdpa attention (gpt-oss's sinks need eager, for one)."""
    from peftcalc.measure.hf_model import AUTO_CLASS, hf_config

    cfg = hf_config(spec)
    try:
        cls = AUTO_CLASS[spec.arch.kind]._model_mapping[type(cfg)]
    except KeyError:
        return True
    return bool(getattr(cls, "_supports_sdpa", True))


# What transformers or peft raise where a model cannot run a method's step (peft's prefix cache in a hybrid
# Mamba model's forward, say): the real step fails the same way, so the estimate says so in one line.
STEP_FAILURES = (ValueError, TypeError, RuntimeError, NotImplementedError)


def trace_profile(spec: ModelSpec, method: Method, setup: Setup, accumulating: bool = False) -> Profile:
    """`_trace_profile`, with a failure of the traced transformers + peft step reported as a PeftcalcError."""
    try:
        return _trace_profile(spec, method, setup, accumulating)
    except PeftcalcError:  # (a ValueError too) already says what
        raise
    except FitError as e:  # (a ValueError too, but ours: the step ran, its bytes are not an exact polynomial)
        raise PeftcalcError(f"{spec.name} with {method.name}: no exact activation profile: {e}") from None
    except STEP_FAILURES as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftcalcError(f"{spec.name} with {method.name}: the transformers + peft training step fails when "
                            f"traced ({type(e).__name__}: {first})") from None


def _trace_profile(spec: ModelSpec, method: Method, setup: Setup, accumulating: bool = False) -> Profile:
    """The profile of `spec` adapted by `method` for `setup`'s regime of sizes (see the module docstring);
    `accumulating`: of a later micro-batch of gradient accumulation.

    Layout a (first, a middle layer of each type, last) is fitted on the grid and checked; layout b (one more
    middle layer) is traced once, off the grid: when layout a's extrapolation predicts it exactly, nothing
    outside the layers grows with their number; else (prefix tuning's prompt encoder output) layout b is fitted
    too and the difference extrapolated."""
    if spec.arch.kind != "decoder":
        raise PeftcalcError(f"{spec.name}: traced profiles cover decoder-only models (this is {spec.arch.kind})")
    cfg = dict(model_config(spec))
    types = layer_types(spec, cfg, method.adapt(spec), setup.gradient_checkpointing)
    la, lb = layouts(types)
    p = plan(cfg, setup.batch_size, setup.seq_len)
    small, note = _traced_setup(spec, setup, p)
    # Both reduced models are checked before anything is traced: a refusal costs no traced step (Jamba's took 80 s).
    spec_a = reduced_spec(spec, cfg, la, types, method, setup.gradient_checkpointing)
    spec_b = spec_a if lb == la else reduced_spec(spec, cfg, lb, types, method, setup.gradient_checkpointing)
    with Tracer(spec_a, method, small, accumulating) as ta:
        step_a, regime = fitted_step(ta, p, check=True)
    step_b, lb_used = step_a, la
    if lb != la:
        with Tracer(spec_b, method, small, accumulating) as tb:
            if not _one_layout_predicts(step_a, la, lb, types, tb.step(*p.check), p.check):
                step_b, lb_used = fitted_step(tb, p, check=False)[0], lb
    ex = extrapolate(step_a, step_b, la, lb_used, types)
    source = (f"{note}layers {_span(la.selected)} of {la.real_count} traced at batch "
              f"{'/'.join(map(str, p.batches))} x {'/'.join(map(str, p.seqs))} tokens with torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
    return Profile(regime, ex.after_forward, ex.forward_peaks, ex.backward_peaks, ex.gradients, source)


def _span(layers: Sequence[int]) -> str:
    return ",".join(map(str, layers))


def _traced_setup(spec: ModelSpec, setup: Setup, p: Plan) -> tuple[Setup, str]:
    """The setup of the traced steps (one process), with eager attention for a model that has no sdpa."""
    small = replace(setup, num_gpus=1, zero_stage=0, offload=False, offload_params=False, tensor_parallel=1,
                    pipeline_parallel=1, sequence_parallel=False, batch_size=p.batches[0], seq_len=p.seqs[0])
    if setup.attention == "sdpa" and not supports_sdpa(spec):
        return replace(small, attention="eager"), (f"{spec.family} has no sdpa attention in transformers "
                                                   f"{transformers.__version__}: traced with eager, its default; ")
    return small, ""
