"""`measure(spec, method, setup, backend, nproc)`: trace or run the real step, with the prediction beside it.

    >>> from peftcalc.model.catalogue import get_model
    >>> from peftcalc.methods import make_method
    >>> from peftcalc.setup import Setup
    >>> r = measure(get_model("llama-2-7b"), make_method("lora"), Setup(precision="bf16", seq_len=2048))
    >>> r.measured.peak, r.predicted.peak, r.peak_phase        # doctest: +SKIP

backend "trace" runs on fake tensors (any size, any machine); "run" on real tensors on the CPU or CUDA;
`nproc` > 1 re-launches the step under torchrun with FSDP2 (--zero 2/3) or DDP (--zero 0), see distributed.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.measure.result import (Bytes, Detail, Environment, MeasureResult, ModelInfo, RankResult, Status)
from peftcalc.measure.step import StepNumbers
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup

BACKENDS = ("trace", "run")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str) -> Environment:
    import peft
    import torch
    import transformers

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        import platform

        name = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return Environment(torch.__version__, transformers.__version__, peft.__version__, name, git_commit())


def model_info(spec: ModelSpec) -> ModelInfo:
    return ModelInfo(spec.name, spec.family, spec.arch.kind, spec.total_params, spec.source)


def setup_dict(setup: Setup) -> dict[str, Any]:
    return dataclasses.asdict(setup)


def method_options(method: Method) -> dict[str, Any]:
    if dataclasses.is_dataclass(method):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(method).items()}
    return {}


def predicted(spec: ModelSpec, method: Method, setup: Setup) -> tuple[Bytes | None, int | None, int | None, str | None]:
    """The analytic estimate as (bytes, overhead, checkpoint bytes, error). The peak is the estimate's total
    without its assumed overhead (measured peaks count tensors only)."""
    try:
        from peftcalc.estimate import estimate_method
    except ImportError:  # pragma: no cover - the analytic layer is part of the package
        return None, None, None, "peftcalc.estimate is not available"
    try:
        est = estimate_method(spec, method, setup)
    except PeftcalcError as e:
        return None, None, None, str(e)
    except Exception as e:  # noqa: BLE001 - a broken estimate must not lose the measurement
        return None, None, None, f"the analytic estimate failed: {type(e).__name__}: {e}"
    m = est.memory
    peak = m.total - m.overhead_bytes
    # measured weights hold every parameter and buffer (rotary tables ...), so the prediction does too
    b = Bytes(weights=m.weight_bytes + m.buffer_bytes + m.master_weight_bytes, gradients=m.gradient_bytes,
              optimizer_states=m.optimizer_state_bytes, activations=m.activation_bytes, peak=peak)
    ckpt = getattr(getattr(est, "storage", None), "checkpoint_bytes", None)
    return b, m.overhead_bytes, ckpt, None


def measured_bytes(n: StepNumbers) -> Bytes:
    return Bytes(weights=n.weight_bytes + n.master_weight_bytes, gradients=n.gradient_bytes,
                 optimizer_states=n.optimizer_state_bytes, activations=n.activation_bytes, peak=n.peak_bytes)


def _failed(backend: str, device: str, status: Status, spec: ModelSpec, method: Method, setup: Setup, message: str,
            pred: Bytes | None, env: Environment | None, notes: tuple[str, ...] = (), overhead: int | None = None,
            pred_ckpt: int | None = None) -> MeasureResult:
    return MeasureResult(backend, device, status, model_info(spec), setup_dict(setup), method.name, None, None,
                         None, pred, None, None, None, (), env or environment(device),
                         Detail(error=message, notes=notes, method_options=method_options(method),
                                predicted_overhead_bytes=overhead, predicted_checkpoint_bytes=pred_ckpt))


def measure(spec: ModelSpec, method: Method, setup: Setup, backend: str = "trace", nproc: int = 1,
            device: str | None = None, save_checkpoint: bool = True, timed_steps: int = 2,
            check_host_memory: bool = True) -> MeasureResult:
    """Trace or run one training step of `spec` adapted by `method` under `setup`; never raises for an OOM
    (status "oom") or a known limitation (status "unsupported"); bad arguments raise PeftcalcError."""
    with warnings.catch_warnings():
        # transformers/peft deprecation chatter (gradient_checkpointing_enable ...) is not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _measure(spec, method, setup, backend, nproc, device, save_checkpoint, timed_steps, check_host_memory)


def _measure(spec: ModelSpec, method: Method, setup: Setup, backend: str, nproc: int, device: str | None,
             save_checkpoint: bool, timed_steps: int, check_host_memory: bool) -> MeasureResult:
    if backend not in BACKENDS:
        raise PeftcalcError(f"--backend must be trace or run, got {backend!r}")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise PeftcalcError(f"--nproc must be a positive integer, got {nproc!r}")
    if nproc > 1:
        if backend != "run":
            raise PeftcalcError("--nproc N runs real processes under torchrun: use it with --backend run")
        from peftcalc.measure.distributed import measure_distributed

        return measure_distributed(spec, method, setup, nproc, device=device, timed_steps=timed_steps)
    if setup.num_gpus != 1 or setup.zero_stage != 0 or setup.offload:
        raise PeftcalcError("--gpus/--zero/--offload describe several processes: measure them with --backend run "
                            "--nproc N --zero 0|2|3 (one process measures one GPU's share without sharding)")
    method.adapt(spec)  # bad method options fail here, with their message
    pred, overhead, pred_ckpt, pred_error = predicted(spec, method, setup)
    notes: tuple[str, ...] = ((f"no prediction: {pred_error}",) if pred_error else ())

    if backend == "trace":
        dev = "cpu (fake tensors)"
        env = environment("cpu")
        try:
            from peftcalc.measure.trace import trace_step

            numbers, adaptation, info, ckpt = trace_step(spec, method, setup, checkpoint=save_checkpoint)
        except PeftcalcError as e:
            return _failed(backend, dev, "unsupported", spec, method, setup, str(e), pred, env, notes, overhead,
                           pred_ckpt)
        except Exception as e:  # noqa: BLE001 - a failed trace is a result with its message
            return _failed(backend, dev, "error", spec, method, setup, f"{type(e).__name__}: {e}", pred, env,
                           notes, overhead, pred_ckpt)
        return _result(backend, dev, spec, method, setup, numbers, info, pred, overhead, pred_ckpt, ckpt, None,
                       None, env, notes)

    from peftcalc.measure.run import default_device, host_memory_available, run_step

    dev = device or default_device()
    env = environment(dev)
    if check_host_memory and dev == "cpu" and pred is not None:
        avail = host_memory_available()
        if avail is not None and pred.peak > 0.9 * avail:
            return _failed(backend, dev, "oom", spec, method, setup,
                           f"not run: the predicted peak ({pred.peak:,} bytes) exceeds 90% of the available host "
                           f"memory ({avail:,} bytes)", pred, env, notes, overhead, pred_ckpt)
    try:
        out = run_step(spec, method, setup, device=dev, timed_steps=timed_steps, save=save_checkpoint)
    except PeftcalcError as e:
        return _failed(backend, dev, "unsupported", spec, method, setup, str(e), pred, env, notes, overhead, pred_ckpt)
    except Exception as e:  # noqa: BLE001
        return _failed(backend, dev, "error", spec, method, setup, f"{type(e).__name__}: {e}", pred, env, notes,
                       overhead, pred_ckpt)
    if out.oom is not None or out.numbers is None:
        return _failed(backend, dev, "oom", spec, method, setup, out.oom or "out of memory", pred, env, notes,
                       overhead, pred_ckpt)
    return _result(backend, dev, spec, method, setup, out.numbers, out.info, pred, overhead, pred_ckpt,
                   out.checkpoint_bytes, out.step_seconds, out.cuda, env, notes)


def _result(backend: str, device: str, spec: ModelSpec, method: Method, setup: Setup, numbers: StepNumbers,
            info: dict[str, Any], pred: Bytes | None, overhead: int | None, pred_ckpt: int | None,
            ckpt: int | None, step_seconds: float | None, cuda: Any, env: Environment,
            notes: tuple[str, ...]) -> MeasureResult:
    tps = (setup.batch_size * setup.seq_len / step_seconds) if step_seconds else None
    detail = Detail(master_weight_bytes=numbers.master_weight_bytes, saved_tensor_bytes=numbers.saved_tensor_bytes,
                    baseline_bytes=numbers.baseline_bytes, phase_peaks=dict(numbers.phase_peaks),
                    predicted_overhead_bytes=overhead, predicted_checkpoint_bytes=pred_ckpt, cuda=cuda,
                    wall_seconds=info.get("wall_seconds"), total_params_built=info.get("total_params"),
                    method_options=method_options(method), notes=tuple(info.get("notes", ())) + notes)
    return MeasureResult(backend, device, "ok", model_info(spec), setup_dict(setup), method.name,
                         info.get("trainable_params"), measured_bytes(numbers), numbers.peak_phase, pred, ckpt,
                         step_seconds, tps, (), env, detail)


def rank_result(rank: int, numbers: StepNumbers) -> RankResult:
    return RankResult(rank, measured_bytes(numbers), numbers.master_weight_bytes, numbers.peak_phase)
