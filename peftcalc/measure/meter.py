"""Count every live tensor storage during a training step, by phase; and what autograd saves for backward.

`LiveMeter` is a `TorchDispatchMode`: every operator output whose storage it has not seen yet adds that
storage's `nbytes()`, and a `weakref.finalize` on the storage subtracts it when the storage dies (torch keeps
one Python object per storage alive as long as the storage lives, so the finalizer fires exactly at the
free). It works the same on real tensors (CPU or CUDA) and on fake tensors (`FakeTensorMode`), which is
what lets a traced step agree with a real CPU step to the byte.

What it counts: storages created by operators that pass through the dispatcher (outputs), plus whatever was
registered with `track()` (parameters, buffers, inputs created before the meter was entered), and every
`UntypedStorage.resize_` while the meter is entered: FSDP2 frees a gathered parameter with
`untyped_storage().resize_(0)` and re-grows the same storage with `resize_(n)` before the next all-gather
(torch/distributed/fsdp/_fully_shard/_fsdp_param.py `free_storage`, `alloc_storage`), which no operator output
shows; the meter wraps `resize_` for as long as it is entered and counts the change in bytes. What it does not
count: scratch memory a kernel allocates inside C++ and frees before returning (e.g. inside fused AdamW or a CPU
attention kernel), and allocator rounding/caching (that is `torch.cuda.max_memory_reserved`'s job).

`CollectiveLog` records every collective a step issues: DDP's reducer (C++) and FSDP2 (Python) both
call the c10d operators (`torch.ops.c10d.allreduce_`, `_allgather_base_`, `_reduce_scatter_base_`, `broadcast_`,
...) through the dispatcher, so a dispatch mode sees each call with its real tensors: the payload in bytes is
exact, whatever algorithm the backend (gloo, NCCL) then runs.
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

# c10d operator -> (collective kind, which argument holds the full-size tensor(s): the payload)
COLLECTIVE_OPS: dict[str, tuple[str, int]] = {
    "allreduce_": ("all-reduce", 0), "allreduce_coalesced_": ("all-reduce", 0),
    "_allgather_base_": ("all-gather", 0), "allgather_": ("all-gather", 0),
    "allgather_into_tensor_coalesced_": ("all-gather", 0), "allgather_coalesced_": ("all-gather", 0),
    "_reduce_scatter_base_": ("reduce-scatter", 1), "reduce_scatter_": ("reduce-scatter", 1),
    "reduce_scatter_tensor_coalesced_": ("reduce-scatter", 1),
    "broadcast_": ("broadcast", 0), "send": ("send", 0),
}


_RESIZE_OPS = {torch.ops.aten.resize_.default, torch.ops.aten.resize_as_.default}


@dataclass(frozen=True)
class CollectiveCall:
    kind: str  # "all-reduce", "all-gather", "reduce-scatter", "broadcast", "send"
    op: str  # the c10d operator
    payload_bytes: int  # the full tensor(s): all-gather output, reduce-scatter input, all-reduce/broadcast tensor


def collective_call(func: Any, args: tuple) -> CollectiveCall | None:
    """A c10d operator call as a collective and its payload; None for what moves no data (barrier, ...)."""
    kind, where = COLLECTIVE_OPS.get(func._schema.name.split("::")[-1], (None, 0))
    if kind is None or where >= len(args):
        return None
    tensors = [t for t in tree_flatten(args[where])[0] if isinstance(t, torch.Tensor)]
    return CollectiveCall(kind, func._schema.name, sum(t.numel() * t.element_size() for t in tensors))


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
        self._resize: Any = None
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

    def _resized(self, storage: Any, old: int) -> None:
        """Account a storage whose size `resize_` changed from `old` bytes (FSDP2's free and re-grow)."""
        key, new = storage._cdata, storage.nbytes()
        with self._lock:
            if key not in self._live:
                if new == 0 or (self.device_type is not None and storage.device.type != self.device_type):
                    return
                self._live[key] = 0
                weakref.finalize(storage, self._free, key)
            self.current += new - self._live[key]
            self._live[key] = new
            if self.current > self.peak:
                self.peak = self.current
            if self._phase is not None and self.current > self.phases.peaks[self._phase]:
                self.phases.peaks[self._phase] = self.current

    def __enter__(self) -> "LiveMeter":
        original = self._resize = torch.UntypedStorage.resize_
        meter = self

        def resize_(storage: Any, size: int) -> Any:
            old = storage.nbytes()
            out = original(storage, size)
            meter._resized(storage, old)
            return out

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.UntypedStorage.resize_ = self._resize  # type: ignore[method-assign]
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func in _RESIZE_OPS and isinstance(args[0], torch.Tensor):  # a tensor resized in place keeps its storage
            storage = args[0].untyped_storage()
            old = storage.nbytes()
            out = func(*args, **(kwargs or {}))
            self._resized(storage, old)
            return out
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


class CollectiveLog(TorchDispatchMode):
    """The collectives one step issues, with their exact payloads (see the module docstring); no memory counted."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[CollectiveCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func.namespace == "c10d":
            call = collective_call(func, args)
            if call is not None:
                self.calls.append(call)
        return func(*args, **(kwargs or {}))


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
