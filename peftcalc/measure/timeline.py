"""The live bytes of a traced step over time, attributed to the decoder layer that made each storage.

`TimelineMeter` is a `LiveMeter` that also records every local maximum of the live bytes (an allocation
followed by a free) with the phase, the layer running at that moment and the state of every layer, and keeps
the live bytes of each layer's storages. `LayerTags` hooks the model's stack of decoder layers:

- forward: a pre-hook marks layer k running (its storages are tagged k), the post-hook marks it done; a hook on
  its output tensor marks the start of its backward (tensor hooks add no autograd node, so nothing the step
  allocates changes);
- backward: layer k runs from its output's hook until layer k-1's fires (a checkpointed layer's recompute
  happens inside that span, so it is tagged k too); layer 0 until backward ends.

Layer states follow stepsim's (peftcalc/stepsim/engine.py `Stack`): 0 not run, 1 done with forward, 2 holding
its saved tensors in backward, 3 done with backward. The bytes each layer holds are taken where stepsim takes
them: state 1 at the last moment of forward (inside the loss: every layer's output consumed, caches that live
until forward returns still there), 2 when backward starts, 3 when layer 0's backward starts (less the gradient
then flowing into layer 0, which the layer above made but does not keep).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from peftcalc.measure.meter import LiveMeter, _plain_tensors
from peftcalc.profile.step import RUNNING, Moment, Timeline


class TimelineMeter(LiveMeter):
    """A LiveMeter that records the moments of the step and the bytes per layer (see the module docstring)."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layer: int | None = None
        self.states = [0] * layers
        self.by_layer = [0] * layers
        self._tag: dict[int, int | None] = {}
        self._pending: str | None = None  # the op of the last allocation, until a free makes it a maximum
        self._op = ""
        self.baseline = 0
        self.recording = False
        self.timeline = Timeline()

    def _add(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        key = s._cdata
        if key in self._live:
            return
        n = s.nbytes()
        self._live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        tag = self.layer if self.recording else None
        self._tag[key] = tag
        if tag is not None:
            self.by_layer[tag] += n
        if self.recording:
            self._pending = self._op
        weakref.finalize(s, self._free, key)

    def _free(self, key: int) -> None:
        n = self._live.pop(key, None)
        if n is None:
            return
        self.flush()
        self.current -= n
        tag = self._tag.pop(key, None)
        if tag is not None:
            self.by_layer[tag] -= n

    def flush(self) -> None:
        """Record the live bytes if the last change was an allocation (a local maximum)."""
        if self._pending is not None:
            self.timeline.moments.append(Moment(self._phase or "", self.layer, tuple(self.states),
                                                self.current - self.baseline, self._pending))
            self._pending = None
            if self._phase == "forward":
                self.snapshot(1)  # the last one stands: every layer done, the stack's outputs consumed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self._op = getattr(func, "__name__", str(func))
        return super().__torch_dispatch__(func, types, args, kwargs)

    def snapshot(self, state: int) -> None:
        self.timeline.held[state] = list(self.by_layer)

    def exclude_from_held(self, state: int, t: torch.Tensor) -> None:
        for p in _plain_tensors(t):
            tag = self._tag.get(p.untyped_storage()._cdata)
            if tag is not None:
                self.timeline.held[state][tag] -= p.untyped_storage().nbytes()

    def start_recording(self) -> None:
        self.baseline = self.current
        self.recording = True

    def start_backward(self, after_forward: int) -> None:
        self.flush()
        self.timeline.after_forward = after_forward - self.baseline
        self.states = [2 if s == 1 else s for s in self.states]
        self.snapshot(2)
        self.phase("backward")

    def end_backward(self) -> None:
        self.flush()
        if 3 not in self.timeline.held:
            self.states = [3 if s in (1, 2) else s for s in self.states]
            self.snapshot(3)
        self.layer = None
        self.recording = False


class LayerTags:
    """Hooks on a stack of decoder layers that keep a TimelineMeter's current layer and layer states."""

    def __init__(self, stack: nn.ModuleList, meter: TimelineMeter) -> None:
        self.meter = meter
        self.count = len(stack)
        self.handles = []
        for k, layer in enumerate(stack):
            self.handles.append(layer.register_forward_pre_hook(self._pre(k)))
            self.handles.append(layer.register_forward_hook(self._post(k)))

    def _pre(self, k: int):
        def hook(module, args):
            m = self.meter
            if m.recording and m._phase == "forward":
                m.flush()
                m.layer = k
                m.states[k] = RUNNING
        return hook

    def _post(self, k: int):
        def hook(module, args, output):
            m = self.meter
            if not (m.recording and m._phase == "forward"):
                return
            m.flush()
            m.layer = None
            m.states[k] = 1
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._backward_starts(k))
        return hook

    def _backward_starts(self, k: int):
        def hook(grad):
            m = self.meter
            m.flush()
            if m.layer is not None and m.layer != k:
                m.states[m.layer] = 3
            if k == 0:
                m.states = [3 if s == 2 else s for s in m.states]
                m.snapshot(3)
                m.exclude_from_held(3, grad)  # in flight to layer 0, not held by the layer that made it
            m.layer = k
            m.states[k] = RUNNING
            return None
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layer_gradient_bytes(stack: nn.ModuleList) -> list[int]:
    """Bytes of the parameter gradients of each layer (distinct storages)."""
    out = []
    for layer in stack:
        seen: set[int] = set()
        total = 0
        for p in layer.parameters():
            if p.grad is not None:
                for t in _plain_tensors(p.grad):
                    key = t.untyped_storage()._cdata
                    if key not in seen:
                        seen.add(key)
                        total += t.untyped_storage().nbytes()
        out.append(total)
    return out


def find_layer_stack(model: nn.Module, count: int) -> nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList of `count` modules holding the most parameters."""
    best: tuple[int, nn.ModuleList] | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            n = sum(p.numel() for p in module.parameters())
            if best is None or n > best[0]:
                best = (n, module)
    if best is None:
        raise ValueError(f"no stack of {count} layers found in {type(model).__name__}")
    return best[1]
