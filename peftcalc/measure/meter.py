"""Count every live tensor storage during a training step, by phase; and what autograd saves for backward.

`LiveMeter` is a `TorchDispatchMode`: every operator output whose storage it has not seen yet adds that
storage's `nbytes()`, and a `weakref.finalize` on the storage subtracts it when the storage dies (torch keeps
one Python object per storage alive as long as the storage lives, so the finalizer fires exactly at the
free). It works the same on real tensors (CPU or CUDA) and on fake tensors (`FakeTensorMode`), which is
what lets a traced step agree with a real CPU step to the byte.

What it counts: storages created by operators that pass through the dispatcher (outputs), plus whatever was
registered with `track()` (parameters, buffers, inputs created before the meter was entered). What it does
not count: scratch memory a kernel allocates inside C++ and frees before returning (e.g. inside fused AdamW
or a CPU attention kernel), and allocator rounding/caching (that is `torch.cuda.max_memory_reserved`'s job).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

PHASES = ("forward", "backward", "optimizer")


def _plain_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors that own storage behind `t`: itself, or the inner tensors of a wrapper subclass (DTensor)."""
    if is_traceable_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
        for a in attrs:
            inner = getattr(t, a)
            if isinstance(inner, torch.Tensor):
                yield from _plain_tensors(inner)
    elif t.layout == torch.strided:
        yield t


def unique_storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights counted once)."""
    seen: set[int] = set(exclude or ())
    total = 0
    for t in tensors:
        if t is None:
            continue
        for p in _plain_tensors(t):
            s = p.untyped_storage()
            if s._cdata not in seen:
                seen.add(s._cdata)
                total += s.nbytes()
    return total


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {p.untyped_storage()._cdata for t in tensors if t is not None for p in _plain_tensors(t)}


@dataclass
class PhasePeaks:
    """Peak live bytes seen in each phase of the measured step, and the live bytes at its boundaries."""

    peaks: dict[str, int] = field(default_factory=dict)
    at_start: dict[str, int] = field(default_factory=dict)
    at_end: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    @property
    def peak_phase(self) -> str | None:
        if not self.peaks:
            return None
        return max(self.peaks, key=lambda k: (self.peaks[k], -PHASES.index(k) if k in PHASES else 0))


class LiveMeter(TorchDispatchMode):
    """Live bytes of all tensor storages, with the peak of each named phase.

    Usage: register pre-existing tensors with `track()`, enter the mode, mark phases with `phase(name)`,
    read `current`, `peak` and `phases`. `device_type` restricts counting to one device type ("cuda").
    """

    def __init__(self, device_type: str | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self._live: dict[int, int] = {}
        self._lock = threading.RLock()
        self.current = 0
        self.peak = 0
        self._phase: str | None = None
        self.phases = PhasePeaks()
        self.ops_seen: set[Any] = set()  # operator overloads that ran (to tell which kernels were chosen)

    # -- registration -------------------------------------------------------------------------------------
    def track(self, *tensors: torch.Tensor | None) -> None:
        """Count storages that exist already (parameters, buffers, inputs made outside the mode)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                for p in _plain_tensors(t):
                    self._add(p)

    def track_all(self, tensors: Iterable[torch.Tensor | None]) -> None:
        self.track(*tensors)

    def _add(self, t: torch.Tensor) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        s = t.untyped_storage()
        key = s._cdata
        with self._lock:
            if key in self._live:
                return
            n = s.nbytes()
            self._live[key] = n
            self.current += n
            if self.current > self.peak:
                self.peak = self.current
            if self._phase is not None and self.current > self.phases.peaks[self._phase]:
                self.phases.peaks[self._phase] = self.current
        weakref.finalize(s, self._free, key)

    def _free(self, key: int) -> None:
        with self._lock:
            n = self._live.pop(key, None)
            if n is not None:
                self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        self.ops_seen.add(func)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                for p in _plain_tensors(t):
                    self._add(p)
        return out

    # -- phases -------------------------------------------------------------------------------------------
    def phase(self, name: str | None) -> None:
        """Close the current phase and open `name` (None: stop attributing peaks)."""
        with self._lock:
            if self._phase is not None:
                self.phases.at_end[self._phase] = self.current
            self._phase = name
            if name is not None:
                self.phases.at_start[name] = self.current
                self.phases.peaks[name] = self.current

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.current
            self.phases = PhasePeaks()


class SavedTensorsAccount:
    """Bytes of the distinct storages autograd saves for backward (`saved_tensors_hooks`), minus excluded ones.

    The pack hook returns a detached view (same storage, no new bytes), so counting changes nothing in what
    is alive when. Pass the parameter storages as `exclude`: a frozen weight saved by a matmul is a weight, not an activation.
    Under non-reentrant gradient checkpointing the checkpointed regions save through their own hooks, so
    this sees only what is saved outside them; the live-storage count after forward is the number to trust.
    """

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.exclude = set(exclude or ())
        self._live: set[int] = set()
        self.total = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        for p in _plain_tensors(t):
            s = p.untyped_storage()
            key = s._cdata
            if key not in self.exclude and key not in self._live:
                self._live.add(key)
                self.total += s.nbytes()
                weakref.finalize(s, self._live.discard, key)  # a later storage may reuse the address
        return t.detach()  # a view of the same storage; returning `t` itself would make a reference cycle

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return self.total

    def __enter__(self) -> "SavedTensorsAccount":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
