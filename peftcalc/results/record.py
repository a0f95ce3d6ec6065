"""The result of a traced or measured step, as frozen dataclasses; `to_dict()` is the JSON contract of the
measured backend and `from_dict()` reads it back (committed results are these dicts, one per line).

`MeasureResult.to_dict()` has exactly the contract's keys and nesting:

    {"backend", "device", "status", "model": {...}, "setup": {...}, "method", "trainable_params",
     "measured_bytes": {"weights", "gradients", "optimizer_states", "activations", "peak"}, "peak_phase",
     "predicted_bytes": {same keys}, "checkpoint_bytes", "step_seconds", "tokens_per_second",
     "per_rank": [{"rank", "measured_bytes": {same keys}}], "environment": {"torch", "transformers", "peft",
     "device_name", "git_commit"}}

plus one key of our own, "detail", holding what the contract has no name for (the difference to the
prediction, per-phase peaks, master weights on their own, CUDA allocator numbers, notes, the error message, and
for a CPU run of a bitsandbytes model the step seen at the allocator: detail.allocator).

What the five byte keys mean, measured and predicted alike:

- weights: parameters and buffers of the model as stored (quantized bases at their packed size, with
  bitsandbytes' QuantState tensors), PLUS the fp32 master copies of the mixed-precision recipes (also reported on their own in detail.master_weight_bytes);
- gradients: the .grad tensors after backward (for a sharded run, this rank's shards);
- optimizer_states: AdamW's exp_avg, exp_avg_sq and step tensors;
- activations: live bytes right after forward minus right before it (what the forward left alive for
  backward, the loss included); predicted: the analytic activation estimate;
- peak: the most live tensor bytes at any moment of the measured step (forward, backward, optimizer step);
  predicted: the estimate's peak without its assumed CUDA/library overhead, which is no tensor.

Values of `status`: "ok", "oom" (out of memory, a result), "unsupported" (a known limit, with its message),
"error" (anything else, with its message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping

from peftcalc.setup import Setup

Status = Literal["ok", "oom", "unsupported", "error"]
BYTE_KEYS = ("weights", "gradients", "optimizer_states", "activations", "peak")


@dataclass(frozen=True)
class Bytes:
    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    peak: int

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in BYTE_KEYS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Bytes | None":
        """None for a record that measured nothing (or an older one that lacks a key)."""
        if not d or any(d.get(k) is None for k in BYTE_KEYS):
            return None
        return cls(**{k: int(d[k]) for k in BYTE_KEYS})

    @classmethod
    def max_of(cls, items: list["Bytes"]) -> "Bytes":
        """Per key, the largest value over ranks (the rank that runs out of memory first decides)."""
        return cls(**{k: max(getattr(b, k) for b in items) for k in BYTE_KEYS})


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    kind: str
    total_params: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ModelInfo | None":
        if not d:
            return None
        return cls(str(d.get("name")), str(d.get("family")), str(d.get("kind")), int(d.get("total_params") or 0),
                   str(d.get("source") or ""))


@dataclass(frozen=True)
class Environment:
    torch: str
    transformers: str
    peft: str
    device_name: str
    git_commit: str | None
    bitsandbytes: str | None = None  # recorded for runs that use it (a quantized base, a bitsandbytes optimizer)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.bitsandbytes is None:
            d.pop("bitsandbytes")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Environment":
        d = d or {}
        return cls(str(d.get("torch")), str(d.get("transformers")), str(d.get("peft")), str(d.get("device_name")),
                   d.get("git_commit"), d.get("bitsandbytes"))

    def key(self) -> tuple[str, ...]:
        """What makes two results comparable: library versions and device, not the commit."""
        base = (self.torch, self.transformers, self.peft, self.device_name)
        return base if self.bitsandbytes is None else base + (f"bitsandbytes {self.bitsandbytes}",)


@dataclass(frozen=True)
class CollectiveCount:
    calls: int
    payload_bytes: int  # the full tensors the collectives were called with
    sent_bytes: int  # what the rank sends under the ring algorithm (peftcalc/collectives.py)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CollectiveBytes:
    """One rank's collectives over one step, by kind ("all-reduce", "all-gather", "reduce-scatter", "broadcast",
    "send"): measured (the c10d operators the step called) or predicted (peftcalc/collectives.py)."""

    by_kind: tuple[tuple[str, CollectiveCount], ...]

    @property
    def sent_bytes(self) -> int:
        return sum(c.sent_bytes for _, c in self.by_kind)

    @property
    def payload_bytes(self) -> int:
        return sum(c.payload_bytes for _, c in self.by_kind)

    def kind(self, name: str) -> CollectiveCount | None:
        return dict(self.by_kind).get(name)

    def to_dict(self) -> dict[str, Any]:
        return {"sent_bytes": self.sent_bytes, "payload_bytes": self.payload_bytes,
                "by_kind": {k: c.to_dict() for k, c in self.by_kind}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CollectiveBytes | None":
        if not d:
            return None
        return cls(tuple((k, CollectiveCount(int(c["calls"]), int(c["payload_bytes"]), int(c["sent_bytes"])))
                         for k, c in sorted((d.get("by_kind") or {}).items())))

    @classmethod
    def of(cls, by_kind: Mapping[str, Mapping[str, int]]) -> "CollectiveBytes":
        return cls(tuple((k, CollectiveCount(int(c["calls"]), int(c["payload_bytes"]), int(c["sent_bytes"])))
                         for k, c in sorted(by_kind.items())))


@dataclass(frozen=True)
class RankResult:
    rank: int
    measured: Bytes
    master_weight_bytes: int = 0
    peak_phase: str | None = None
    collective_bytes: CollectiveBytes | None = None  # measured, over the measured step; None in older records
    predicted_collective_bytes: CollectiveBytes | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "measured_bytes": self.measured.to_dict()}
        if self.collective_bytes is not None:
            d["collective_bytes"] = self.collective_bytes.to_dict()
        if self.predicted_collective_bytes is not None:
            d["predicted_collective_bytes"] = self.predicted_collective_bytes.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], master_weight_bytes: int = 0) -> "RankResult":
        measured = Bytes.from_dict(d.get("measured_bytes"))
        if measured is None:
            raise ValueError(f"rank {d.get('rank')} has no measured bytes")
        return cls(int(d["rank"]), measured, master_weight_bytes, None,
                   CollectiveBytes.from_dict(d.get("collective_bytes")),
                   CollectiveBytes.from_dict(d.get("predicted_collective_bytes")))


@dataclass(frozen=True)
class OpScratch:
    """The largest scratch one operator held inside itself (above what it returned), over its calls."""

    op: str
    scratch_bytes: int
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "scratch_bytes": self.scratch_bytes, "calls": self.calls}


@dataclass(frozen=True)
class AllocatorNumbers:
    """Peaks above the measured step's start at the allocator, beside the dispatch-level ones."""

    phase_peaks: dict[str, int]  # allocator: the most allocated above the step's start, per phase
    dispatch_phase_peaks: dict[str, int]  # LiveMeter: the same, from the operators' outputs
    scratch: tuple[OpScratch, ...]  # the operators with the largest in-operator scratch, largest first

    @property
    def unseen_bytes(self) -> dict[str, int]:
        """Per phase: what the allocator saw at its peak that the dispatch-level counter did not."""
        return {k: v - self.dispatch_phase_peaks.get(k, 0) for k, v in self.phase_peaks.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"phase_peaks": dict(self.phase_peaks), "dispatch_phase_peaks": dict(self.dispatch_phase_peaks),
                "unseen_bytes": self.unseen_bytes, "scratch": [s.to_dict() for s in self.scratch]}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AllocatorNumbers | None":
        if not d:
            return None
        return cls(dict(d["phase_peaks"]), dict(d["dispatch_phase_peaks"]),
                   tuple(OpScratch(s["op"], s["scratch_bytes"], s["calls"]) for s in d.get("scratch", ())))



@dataclass(frozen=True)
class CudaNumbers:
    """torch.cuda's view of the measured step (allocator-level, so it includes rounding and caching)."""

    max_allocated_bytes: int
    max_reserved_bytes: int
    total_bytes: int  # mem_get_info total
    free_bytes: int  # mem_get_info free, at the end of the measured step
    non_allocator_bytes: int  # total - free - reserved: CUDA context, library workspaces, other processes

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CudaNumbers | None":
        return cls(**{f.name: int(d[f.name]) for f in fields(cls)}) if d else None


@dataclass(frozen=True)
class Detail:
    master_weight_bytes: int | None = None
    saved_tensor_bytes: int | None = None
    baseline_bytes: int | None = None
    phase_peaks: dict[str, int] = field(default_factory=dict)
    predicted_overhead_bytes: int | None = None
    predicted_checkpoint_bytes: int | None = None
    cuda: CudaNumbers | None = None
    wall_seconds: float | None = None
    total_params_built: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    error: str | None = None
    allocator: AllocatorNumbers | None = None  # a CPU run seen at the allocator (peftcalc/measure/allocator.py)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Detail":
        d = d or {}
        return cls(master_weight_bytes=d.get("master_weight_bytes"), saved_tensor_bytes=d.get("saved_tensor_bytes"),
                   baseline_bytes=d.get("baseline_bytes"), phase_peaks=dict(d.get("phase_peaks") or {}),
                   predicted_overhead_bytes=d.get("predicted_overhead_bytes"),
                   predicted_checkpoint_bytes=d.get("predicted_checkpoint_bytes"),
                   cuda=CudaNumbers.from_dict(d.get("cuda")), wall_seconds=d.get("wall_seconds"),
                   total_params_built=d.get("total_params_built"), method_options=dict(d.get("method_options") or {}),
                   notes=tuple(d.get("notes") or ()), error=d.get("error"),
                   allocator=AllocatorNumbers.from_dict(d.get("allocator")))


@dataclass(frozen=True)
class MeasureResult:
    backend: str  # "trace" or "run"
    device: str  # "cpu (fake tensors)", "cpu", "cuda"
    status: Status
    model: ModelInfo | None  # None: a run that failed before its model was built
    setup: Setup | None
    method: str | None
    trainable_params: int | None
    measured: Bytes | None
    peak_phase: str | None
    predicted: Bytes | None
    checkpoint_bytes: int | None
    step_seconds: float | None
    tokens_per_second: float | None
    per_rank: tuple[RankResult, ...]
    environment: Environment
    detail: Detail = Detail()

    def difference_bytes(self) -> dict[str, int] | None:
        """predicted - measured, per key."""
        if self.measured is None or self.predicted is None:
            return None
        return {k: getattr(self.predicted, k) - getattr(self.measured, k) for k in BYTE_KEYS}

    def difference_percent(self) -> dict[str, float | None] | None:
        """(predicted - measured) / measured in %, per key; None where nothing was measured."""
        diff = self.difference_bytes()
        if diff is None or self.measured is None:
            return None
        return {k: (round(100.0 * diff[k] / getattr(self.measured, k), 4) if getattr(self.measured, k) else None)
                for k in BYTE_KEYS}

    def to_dict(self) -> dict[str, Any]:
        d = self.detail
        return {
            "backend": self.backend,
            "device": self.device,
            "status": self.status,
            "model": self.model.to_dict() if self.model else None,
            "setup": asdict(self.setup) if self.setup else None,
            "method": self.method,
            "trainable_params": self.trainable_params,
            "measured_bytes": self.measured.to_dict() if self.measured else None,
            "peak_phase": self.peak_phase,
            "predicted_bytes": self.predicted.to_dict() if self.predicted else None,
            "checkpoint_bytes": self.checkpoint_bytes,
            "step_seconds": self.step_seconds,
            "tokens_per_second": self.tokens_per_second,
            "per_rank": [r.to_dict() for r in self.per_rank],
            "environment": self.environment.to_dict(),
            "detail": {
                "difference_bytes": self.difference_bytes(),
                "difference_percent": self.difference_percent(),
                "master_weight_bytes": d.master_weight_bytes,
                "saved_tensor_bytes": d.saved_tensor_bytes,
                "baseline_bytes": d.baseline_bytes,
                "phase_peaks": dict(d.phase_peaks),
                "predicted_overhead_bytes": d.predicted_overhead_bytes,
                "predicted_checkpoint_bytes": d.predicted_checkpoint_bytes,
                "cuda": d.cuda.to_dict() if d.cuda else None,
                "wall_seconds": d.wall_seconds,
                "total_params_built": d.total_params_built,
                "method_options": dict(d.method_options),
                "per_rank_master_weight_bytes": [r.master_weight_bytes for r in self.per_rank],
                "notes": list(d.notes),
                "error": d.error,
                **({"allocator": d.allocator.to_dict()} if d.allocator is not None else {}),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeasureResult":
        """A result as `to_dict()` wrote it; fields a failed run never had are None."""
        detail = Detail.from_dict(d.get("detail"))
        masters = (d.get("detail") or {}).get("per_rank_master_weight_bytes") or []
        per_rank = tuple(RankResult.from_dict(r, masters[i] if i < len(masters) else 0)
                         for i, r in enumerate(d.get("per_rank") or ()))
        return cls(backend=str(d.get("backend")), device=str(d.get("device")), status=d.get("status", "error"),
                   model=ModelInfo.from_dict(d.get("model")), setup=setup_from_dict(d.get("setup")),
                   method=d.get("method"), trainable_params=d.get("trainable_params"),
                   measured=Bytes.from_dict(d.get("measured_bytes")), peak_phase=d.get("peak_phase"),
                   predicted=Bytes.from_dict(d.get("predicted_bytes")), checkpoint_bytes=d.get("checkpoint_bytes"),
                   step_seconds=d.get("step_seconds"), tokens_per_second=d.get("tokens_per_second"),
                   per_rank=per_rank, environment=Environment.from_dict(d.get("environment")), detail=detail)


SETUP_FIELDS = frozenset(f.name for f in fields(Setup))


def setup_from_dict(d: Mapping[str, Any] | None) -> Setup | None:
    """A recorded setup; keys this version does not know are ignored, missing ones take today's defaults."""
    return Setup(**{k: v for k, v in d.items() if k in SETUP_FIELDS}) if d else None
