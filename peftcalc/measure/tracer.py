"""A model traced at several sizes: built, adapted, put on fake tensors and prepared (optimizer states and all) once,
then each `step(batch, seq)` runs one forward and backward on it, recorded moment by moment (timeline.py).

The step is `peftcalc measure --backend trace`'s (measure/step.py), less the optimizer, which acts outside the
activations: inputs of the given size, the loss, backward, and the gradients set to None again. The cyclic
garbage collector is off during a step, so that storages are freed where reference counting frees them, at
every size the same (and a full collection per step would cost more than the step).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from dataclasses import replace

import torch

from peftcalc.measure.adapted import build_adapted
from peftcalc.measure.meter import unique_storage_bytes
from peftcalc.measure.step import _param_and_buffer_tensors, _warm_up, make_inputs, prepare_training, stray_tensors
from peftcalc.measure.timeline import LayerTags, TimelineMeter, find_layer_stack, layer_gradient_bytes
from peftcalc.measure.trace import fake_step_mode, fakeify, warmup_of
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.profile.step import Timeline
from peftcalc.setup import Setup


class Tracer(contextlib.AbstractContextManager):
    """`with Tracer(spec, method, setup) as t: t.step(2, 128)`; `accumulating`: every trainable parameter holds a
    gradient before each step (a later micro-batch of gradient accumulation), which backward adds into."""

    def __init__(self, spec: ModelSpec, method: Method, setup: Setup, accumulating: bool = False) -> None:
        self.spec, self.method, self.setup, self.accumulating = spec, method, setup, accumulating
        self.steps = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Tracer":
        try:
            self._stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            model, adaptation, notes = build_adapted(self.spec, self.method, self.setup, device="meta")
            self._stack.enter_context(fake_step_mode(adaptation, self.setup))
            fakeify(model, "cpu")
            self.prep = prepare_training(model, self.spec, self.setup, "cpu", notes)
            self.layers = find_layer_stack(self.prep.model, self.spec.arch.num_layers)
            _warm_up(self.prep, warmup_of(adaptation))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> bool | None:
        return self._stack.__exit__(*exc)

    def step(self, batch: int, seq: int) -> Timeline:
        prep = self.prep
        prep.inputs = make_inputs(self.spec, replace(self.setup, batch_size=batch, seq_len=seq), "cpu")
        self.steps += 1
        if self.accumulating:
            with torch.no_grad():
                for p in prep.trainable:
                    p.grad = torch.zeros_like(p)
        meter = TimelineMeter(len(self.layers))
        tags = LayerTags(self.layers, meter)
        for tensors in ([p.grad for p in prep.trainable if p.grad is not None], _param_and_buffer_tensors(prep.model),
                        stray_tensors(prep.model), prep.master_weights, prep.inputs.values()):
            meter.track_all(tensors)
        gc.disable()
        try:
            with meter:
                tl = self._forward_backward(meter)
                prep.optimizer.zero_grad(set_to_none=True)
                meter.phase(None)
        finally:
            gc.enable()
            tags.remove()
        return tl

    def _forward_backward(self, meter: TimelineMeter) -> Timeline:
        meter.start_recording()
        meter.phase("forward")
        loss = self.prep.forward_loss()
        meter.start_backward(meter.current)
        loss.backward()
        del loss
        meter.end_backward()
        tl = meter.timeline
        if self.accumulating:  # the gradients were there before the step: nothing new to count
            tl.gradients, tl.layer_gradients = 0, [0] * len(self.layers)
        else:
            tl.gradients = unique_storage_bytes([p.grad for p in self.prep.model.parameters() if p.grad is not None])
            tl.layer_gradients = layer_gradient_bytes(self.layers)
        return tl


def trace_timelines(spec: ModelSpec, method: Method, setup: Setup, sizes: list[tuple[int, int]],
                    accumulating: bool = False) -> list[Timeline]:
    """The timelines of `spec`'s step at each (batch, seq) of `sizes`, on one prepared model."""
    with Tracer(spec, method, replace(setup, batch_size=sizes[0][0], seq_len=sizes[0][1]), accumulating) as t:
        return [t.step(b, s) for b, s in sizes]
