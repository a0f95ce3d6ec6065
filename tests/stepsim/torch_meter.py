"""An independent byte meter for real torch operators, written for these tests (it does not import
peftcalc.measure, so a bug there cannot hide one in stepsim).

`StorageMeter` is a TorchDispatchMode: every operator output whose storage it has not seen adds that storage's
bytes; a `weakref.finalize` on the storage's Python object subtracts them when the storage dies (torch keeps
one Python object per live storage, so it fires at the free). `SavedStorages` records, through
`torch.autograd.graph.saved_tensors_hooks`, the distinct storages autograd saves. `measure` runs a forward
and its backward under both and reports the numbers stepsim predicts (harness.predict).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class StorageMeter(TorchDispatchMode):
    """Live bytes of the storages created while the mode is on (plus those passed to `track`)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def track(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        if t.layout != torch.strided:
            return
        s = t.untyped_storage()
        key = s._cdata
        if key in self.live:
            return
        self.live[key] = s.nbytes()
        self.current += s.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(s, self._free, key)

    def _free(self, key: int) -> None:
        n = self.live.pop(key, None)
        if n is not None:
            self.current -= n

    def reset_peak(self) -> int:
        self.peak = self.current
        return self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


class SavedStorages:
    """The distinct storages autograd saves while active: storage key -> bytes."""

    def __init__(self) -> None:
        self.saved: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.saved.setdefault(s._cdata, s.nbytes())
        return t.detach()  # same storage; returning `t` would make a saved output a reference cycle

    def __enter__(self) -> "SavedStorages":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass
class Measured:
    """One operator's bytes, above what existed before its forward (its inputs, the weights, the seed)."""

    forward_peak: int  # the highest live bytes the forward reached
    after_forward: int  # live when the forward returns, its output included
    saved_new: int  # bytes of the storages autograd saved that the forward created (the output included)
    saved_inputs: int  # bytes of the activations' storages autograd saved
    graph_only: int  # live after forward once the output is dropped: what the graph alone keeps
    backward_peak: int  # highest live bytes during backward, above the moment it started
    after_backward: int  # live when backward returns, above the moment it started
    grads: list[int] = field(default_factory=list)  # bytes of each leaf's new gradient (0: the seed or an input)


def measure(make_inputs: Callable[[], Sequence[torch.Tensor]], forward: Callable[..., torch.Tensor],
            params: Sequence[torch.Tensor] = (), autocast: torch.dtype | None = None,
            backward: bool = True) -> Measured:
    """Run `forward(*inputs, *params)` and its backward on real CPU tensors.

    `make_inputs` builds the activations (counted: they are made under the meter). `params` (weights, and
    tensors such as token ids that exist before the step) are not counted, as stepsim counts them with the
    model states; the weights' gradients are. The seed is `ones_like(output)`; gradients go to every input
    and parameter that requires grad through `torch.autograd.grad` (captured as computed: no AccumulateGrad
    copy, no in-place accumulation into an existing .grad). The forward runs a second time to see what the
    graph keeps without its output.
    """

    def run(keep_output: bool):
        meter = StorageMeter()
        meter.track(*params)
        with meter:
            xs = list(make_inputs())
            base = meter.reset_peak()
            rec = SavedStorages()
            amp = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
            with rec, amp:
                out = forward(*xs, *params)
            forward_peak = meter.peak - base
            after = meter.current - base
            inputs = {storage_key(x) for x in xs}
            known = {storage_key(p) for p in params}
            saved_inputs = sum(b for k, b in rec.saved.items() if k in inputs)
            saved_new = sum(b for k, b in rec.saved.items() if k not in inputs and k not in known)
            if not keep_output:
                fn = out.grad_fn
                del out
                graph_only = meter.current - base
                del fn
                return graph_only
            if not backward:
                del out, xs
                return Measured(forward_peak, after, saved_new, saved_inputs, 0, 0, 0, [])
            seed = torch.ones_like(out)
            wrt = [t for t in (*xs, *params) if t.requires_grad]
            start = meter.reset_peak()
            grads = torch.autograd.grad(out, wrt, seed)
            backward_peak = meter.peak - start
            after_backward = meter.current - start
            reused = inputs | {storage_key(seed)}
            sizes = [0 if storage_key(g) in reused else g.untyped_storage().nbytes() for g in grads]
            del grads, out, seed, xs
        return Measured(forward_peak, after, saved_new, saved_inputs, 0, backward_peak, after_backward, sizes)

    m = run(True)
    m.graph_only = run(False)
    return m
