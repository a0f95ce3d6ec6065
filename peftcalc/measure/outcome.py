"""A MeasureResult from the parts of a measured step: the environment, the prediction, the numbers or the
failure. Shared by one process (`api.py`) and several (`distributed.py`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.measure.step import StepNumbers
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.results.predict import Prediction, predict
from peftcalc.results.record import Bytes, Detail, Environment, MeasureResult, ModelInfo, RankResult, Status
from peftcalc.setup import Setup


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str, uses_bitsandbytes: bool = False) -> Environment:
    import peft
    import torch
    import transformers

    bnb_version = None
    if uses_bitsandbytes:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        import platform

        name = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return Environment(torch.__version__, transformers.__version__, peft.__version__, name, git_commit(), bnb_version)


def uses_bitsandbytes(method: Method, setup: Setup) -> bool:
    """A quantized base (QLoRA) or a bitsandbytes optimizer."""
    from peftcalc.optim import get_optimizer

    return getattr(method, "quantization", None) is not None or get_optimizer(setup.optimizer).bitsandbytes


def model_info(spec: ModelSpec) -> ModelInfo:
    return ModelInfo(spec.name, spec.family, spec.arch.kind, spec.total_params, spec.source)


def method_options(method: Method) -> dict[str, Any]:
    if dataclasses.is_dataclass(method):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(method).items()}
    return {}


@dataclass(frozen=True)
class Context:
    """What every result of one request carries, whether it measured or failed."""

    spec: ModelSpec
    method: Method
    setup: Setup
    backend: str
    device: str
    environment: Environment
    prediction: Prediction | None
    notes: tuple[str, ...] = ()

    def failed(self, status: Status, message: str) -> MeasureResult:
        return MeasureResult(self.backend, self.device, status, model_info(self.spec), self.setup, self.method.name,
                             None, None, None, self.predicted, None, None, None, (), self.environment,
                             self.detail(error=message))

    @property
    def predicted(self) -> Bytes | None:
        return self.prediction.bytes if self.prediction else None

    def detail(self, **fields: Any) -> Detail:
        p = self.prediction
        notes = tuple(fields.pop("notes", ())) + self.notes
        return Detail(predicted_overhead_bytes=p.overhead_bytes if p else None,
                      predicted_checkpoint_bytes=p.checkpoint_bytes if p else None,
                      method_options=method_options(self.method), notes=notes, **fields)


def context(spec: ModelSpec, method: Method, setup: Setup, backend: str, device: str) -> Context:
    """The prediction beside the measurement; a failing estimate is a note, never a lost measurement."""
    try:
        prediction, note = predict(spec, method, setup, "cpu" if backend == "trace" else device), None
    except PeftcalcError as e:
        prediction, note = None, str(e)
    except Exception as e:  # noqa: BLE001 - a broken estimate must not lose the measurement
        prediction, note = None, f"the analytic estimate failed: {type(e).__name__}: {e}"
    env = environment("cpu" if backend == "trace" else device, uses_bitsandbytes(method, setup))
    return Context(spec, method, setup, backend, device, env, prediction,
                   (f"no prediction: {note}",) if note else ())


def measured_bytes(n: StepNumbers) -> Bytes:
    return Bytes(weights=n.weight_bytes + n.master_weight_bytes, gradients=n.gradient_bytes,
                 optimizer_states=n.optimizer_state_bytes, activations=n.activation_bytes, peak=n.peak_bytes)


def rank_result(rank: int, numbers: StepNumbers) -> RankResult:
    return RankResult(rank, measured_bytes(numbers), numbers.master_weight_bytes, numbers.peak_phase)
