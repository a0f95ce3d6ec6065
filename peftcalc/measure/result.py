"""The result of a traced or measured step, as frozen dataclasses; `to_dict()` is the JSON contract of issue 3.

`MeasureResult.to_dict()` has exactly the contract's keys and nesting:

    {"backend", "device", "status", "model": {...}, "setup": {...}, "method", "trainable_params",
     "measured_bytes": {"weights", "gradients", "optimizer_states", "activations", "peak"}, "peak_phase",
     "predicted_bytes": {same keys}, "checkpoint_bytes", "step_seconds", "tokens_per_second",
     "per_rank": [{"rank", "measured_bytes": {same keys}}], "environment": {"torch", "transformers", "peft",
     "device_name", "git_commit"}}

plus one key of our own, "detail", holding what the contract has no name for (the difference to the
prediction, per-phase peaks, master weights on their own, CUDA allocator numbers, notes, the error message).

What the five byte keys mean, measured and predicted alike:

- weights: parameters and buffers of the model as stored (quantized bases at their packed size), PLUS the
  fp32 master copies of the mixed-precision recipes (also reported on their own in detail.master_weight_bytes);
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

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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


@dataclass(frozen=True)
class Environment:
    torch: str
    transformers: str
    peft: str
    device_name: str
    git_commit: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> tuple[str, str, str, str]:
        """What makes two results comparable: library versions and device, not the commit."""
        return (self.torch, self.transformers, self.peft, self.device_name)


@dataclass(frozen=True)
class RankResult:
    rank: int
    measured: Bytes
    master_weight_bytes: int = 0
    peak_phase: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "measured_bytes": self.measured.to_dict()}


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


@dataclass(frozen=True)
class MeasureResult:
    backend: str  # "trace" or "run"
    device: str  # "cpu (fake tensors)", "cpu", "cuda"
    status: Status
    model: ModelInfo
    setup: dict[str, Any]
    method: str
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
            "model": self.model.to_dict(),
            "setup": dict(self.setup),
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
            },
        }
