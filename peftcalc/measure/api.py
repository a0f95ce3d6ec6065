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

import warnings
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.measure.outcome import Context, context, measured_bytes, model_info
from peftcalc.measure.step import StepNumbers
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.results.record import MeasureResult
from peftcalc.results.request import BACKENDS
from peftcalc.setup import Setup


def measure(spec: ModelSpec, method: Method, setup: Setup, backend: str = "trace", nproc: int = 1,
            device: str | None = None, save_checkpoint: bool = True, timed_steps: int = 2,
            check_host_memory: bool = True) -> MeasureResult:
    """Trace or run one training step of `spec` adapted by `method` under `setup`; never raises for an OOM
    (status "oom") or a known limitation (status "unsupported"); bad arguments raise PeftcalcError."""
    with warnings.catch_warnings():
        # transformers/peft deprecation chatter (gradient_checkpointing_enable ...) is not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        _check(setup, backend, nproc)
        if nproc > 1:
            from peftcalc.measure.distributed import measure_distributed

            return measure_distributed(spec, method, setup, nproc, device=device, timed_steps=timed_steps)
        method.adapt(spec)  # bad method options fail here, with their message
        if backend == "trace":
            return _trace(context(spec, method, setup, backend, "cpu (fake tensors)"), save_checkpoint)
        from peftcalc.measure.run import default_device

        ctx = context(spec, method, setup, backend, device or default_device())
        return _run(ctx, save_checkpoint, timed_steps, check_host_memory)


def _check(setup: Setup, backend: str, nproc: int) -> None:
    if backend not in BACKENDS:
        raise PeftcalcError(f"--backend must be trace or run, got {backend!r}")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise PeftcalcError(f"--nproc must be a positive integer, got {nproc!r}")
    if nproc > 1 and backend != "run":
        raise PeftcalcError("--nproc N runs real processes under torchrun: use it with --backend run")
    if setup.tensor_parallel > 1 or setup.pipeline_parallel > 1:
        raise PeftcalcError("--tp/--pp are estimated, not measured (one GPU's shard is checked against a traced "
                            "shard model in tests/test_parallel.py)")
    if nproc == 1 and (setup.num_gpus != 1 or setup.zero_stage != 0 or setup.offload):
        raise PeftcalcError("--gpus/--zero/--offload describe several processes: measure them with --backend run "
                            "--nproc N --zero 0|2|3 (one process measures one GPU's share without sharding)")


def _trace(ctx: Context, save_checkpoint: bool) -> MeasureResult:
    from peftcalc.measure.trace import trace_step

    try:
        numbers, _, info, ckpt = trace_step(ctx.spec, ctx.method, ctx.setup, checkpoint=save_checkpoint)
    except PeftcalcError as e:
        return ctx.failed("unsupported", str(e))
    except Exception as e:  # noqa: BLE001 - a failed trace is a result with its message
        return ctx.failed("error", f"{type(e).__name__}: {e}")
    return _result(ctx, numbers, info, ckpt, None, None)


def _run(ctx: Context, save_checkpoint: bool, timed_steps: int, check_host_memory: bool) -> MeasureResult:
    from peftcalc.measure.run import host_memory_available, run_step

    if check_host_memory and ctx.device == "cpu" and ctx.predicted is not None:
        avail = host_memory_available()
        if avail is not None and ctx.predicted.peak > 0.9 * avail:
            return ctx.failed("oom", f"not run: the predicted peak ({ctx.predicted.peak:,} bytes) exceeds 90% of the "
                                     f"available host memory ({avail:,} bytes)")
    try:
        out = run_step(ctx.spec, ctx.method, ctx.setup, device=ctx.device, timed_steps=timed_steps,
                       save=save_checkpoint)
    except PeftcalcError as e:
        return ctx.failed("unsupported", str(e))
    except Exception as e:  # noqa: BLE001
        return ctx.failed("error", f"{type(e).__name__}: {e}")
    if out.oom is not None or out.numbers is None:
        return ctx.failed("oom", out.oom or "out of memory")
    return _result(ctx, out.numbers, out.info, out.checkpoint_bytes, out.step_seconds, out.cuda)


def _result(ctx: Context, numbers: StepNumbers, info: dict[str, Any], ckpt: int | None,
            step_seconds: float | None, cuda: Any) -> MeasureResult:
    setup = ctx.setup
    tps = (setup.batch_size * setup.seq_len / step_seconds) if step_seconds else None
    detail = ctx.detail(master_weight_bytes=numbers.master_weight_bytes,
                        saved_tensor_bytes=numbers.saved_tensor_bytes, baseline_bytes=numbers.baseline_bytes,
                        phase_peaks=dict(numbers.phase_peaks), cuda=cuda, wall_seconds=info.get("wall_seconds"),
                        total_params_built=info.get("total_params"), notes=tuple(info.get("notes", ())),
                        allocator=info.get("allocator"))
    return MeasureResult(ctx.backend, ctx.device, "ok", model_info(ctx.spec), setup, ctx.method.name,
                         info.get("trainable_params"), measured_bytes(numbers), numbers.peak_phase, ctx.predicted,
                         ckpt, step_seconds, tps, (), ctx.environment, detail)
