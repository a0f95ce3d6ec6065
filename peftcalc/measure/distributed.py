"""Several processes: the measured step under torchrun, with FSDP2 or DDP, numbers per rank.

`measure_distributed` re-launches this module under `python -m torch.distributed.run --standalone
--nproc_per_node N`. Each rank builds the same model (same seed), wraps it, runs the warm-up and measured
step with its own live-storage meter and writes its numbers to `rank<r>.json` in a temporary folder; the
parent gathers them into `per_rank`. Backends: gloo on the CPU, nccl on CUDA (one GPU per rank).

Wrapping, by `--zero`:
- 0: DistributedDataParallel (every rank holds everything; gradient buckets are DDP's own memory);
- 2: FSDP2 `fully_shard(reshard_after_forward=False)` on each transformer block, then on the root:
     gradients and optimizer states sharded, parameters kept gathered between forward and backward;
- 3: FSDP2 `fully_shard` on each block, then on the root: parameters, gradients and states sharded; with
     `--sharding fsdp1`, FSDP1 `FullyShardedDataParallel(FULL_SHARD, BACKWARD_PRE, use_orig_params=False,
     limit_all_gathers=True)` wrapped as HF Trainer + accelerate wrap it: each block a unit
     (transformer_auto_wrap_policy), and for peft models every trainable leaf its own unit too
     (peft.utils.other.fsdp_auto_wrap_policy, which transformers' Trainer installs for LoRA); on the CPU with
     `device_id=cpu` (FSDP1 refuses a CPU-only build otherwise).
ZeRO-1 has no FSDP equivalent, DeepSpeed and CPU offload are not measured here; they are refused with a message.
The top-level `measured_bytes` is, per key, the largest value over ranks (the rank that runs out first).

Each rank's meter also records the collectives of its measured step (measure/meter.py: every c10d operator
DDP's reducer and FSDP2 call passes through the dispatcher with its real tensors, so the payloads are exact);
`per_rank[].collective_bytes` carries them by kind, beside `per_rank[].predicted_collective_bytes` from
peftcalc/collectives.py. Bytes sent per rank are the payloads under the ring algorithm, on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.measure.outcome import Context, context, model_info, rank_result
from peftcalc.measure.step import StepNumbers
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.results.record import Bytes, CollectiveBytes, MeasureResult
from peftcalc.setup import Setup

ZERO_STAGES = (0, 2, 3)
DEFAULT_TIMEOUT_S = 3600


def check_distributed_setup(setup: Setup, nproc: int) -> Setup:
    """The setup as the ranks run it (num_gpus = nproc); refuses what is not measured."""
    if setup.zero_stage not in ZERO_STAGES:
        raise PeftcalcError(f"--zero {setup.zero_stage} is not measured: FSDP2 has no ZeRO-1 equivalent; "
                            "use --zero 0 (DDP), 2 (sharded gradients and states) or 3 (all sharded)")
    if setup.offload:
        raise PeftcalcError("--offload is estimated but not measured by --nproc runs")
    if setup.zero_stage and setup.sharding_impl == "deepspeed":
        raise PeftcalcError("--sharding deepspeed is estimated but not measured by --nproc runs (FSDP1/FSDP2 are)")
    if setup.sharding_impl == "fsdp1" and setup.zero_stage != 3:
        raise PeftcalcError("--sharding fsdp1 is measured with --zero 3 (FULL_SHARD)")
    if setup.num_gpus not in (1, nproc):
        raise PeftcalcError(f"--gpus {setup.num_gpus} disagrees with --nproc {nproc}: give one of them")
    return replace(setup, num_gpus=nproc)


def measure_distributed(spec: ModelSpec, method: Method, setup: Setup, nproc: int, device: str | None = None,
                        timed_steps: int = 2, timeout_s: int = DEFAULT_TIMEOUT_S) -> MeasureResult:
    """Run the step on `nproc` processes and gather a MeasureResult with one `per_rank` entry each."""
    setup = check_distributed_setup(setup, nproc)
    method.adapt(spec)
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise PeftcalcError(f"--nproc {nproc} needs {nproc} GPUs; this machine has {torch.cuda.device_count()}")
    ctx = context(spec, method, setup, "run", dev)
    t0 = time.perf_counter()
    try:
        ranks, stderr = _launch(ctx, nproc, timed_steps, timeout_s)
    except subprocess.TimeoutExpired:
        return ctx.failed("error", f"torchrun did not finish in {timeout_s} s")
    if len(ranks) != nproc or any(r.get("status") != "ok" for r in ranks):
        statuses = {r.get("status") for r in ranks}
        status = "oom" if "oom" in statuses else ("unsupported" if "unsupported" in statuses else "error")
        messages = [r.get("error") for r in ranks if r.get("error")]
        return ctx.failed(status, messages[0] if messages else stderr)
    return _gathered(ctx, sorted(ranks, key=lambda r: r["rank"]), time.perf_counter() - t0)


def _launch(ctx: Context, nproc: int, timed_steps: int, timeout_s: int) -> tuple[list[dict[str, Any]], str]:
    """torchrun this module's worker on `nproc` ranks: what each rank wrote, and the tail of stderr."""
    with tempfile.TemporaryDirectory(prefix="peftcalc-dist-") as tmp:
        request = Path(tmp) / "request.pkl"
        request.write_bytes(pickle.dumps({"spec": ctx.spec, "method": ctx.method, "setup": ctx.setup,
                                          "device": ctx.device, "timed_steps": timed_steps}))
        root = str(Path(__file__).resolve().parents[2])
        env_vars = dict(os.environ)
        env_vars["PYTHONPATH"] = root + (os.pathsep + env_vars["PYTHONPATH"] if env_vars.get("PYTHONPATH") else "")
        env_vars.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "peftcalc.measure.distributed", "--worker", str(request), tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env_vars, timeout=timeout_s)
        ranks = [json.loads(f.read_text()) for r in range(nproc) if (f := Path(tmp) / f"rank{r}.json").exists()]
    tail = (proc.stderr or "").strip().splitlines()[-15:]
    return ranks, f"torchrun exited with {proc.returncode}: " + " | ".join(tail)


def _gathered(ctx: Context, ranks: list[dict[str, Any]], wall: float) -> MeasureResult:
    """One result from the ranks' numbers: per key the largest value over ranks, and each rank's own."""
    nproc, setup = len(ranks), ctx.setup
    numbers = [StepNumbers(**r["numbers"]) for r in ranks]
    predicted = predicted_collectives(ctx.spec, ctx.method, setup)
    per_rank = tuple(replace(rank_result(r["rank"], n), collective_bytes=measured_collectives(r["collectives"], nproc),
                             predicted_collective_bytes=predicted) for r, n in zip(ranks, numbers))
    worst = max(numbers, key=lambda n: n.peak_bytes)
    steps = [r.get("step_seconds") for r in ranks if r.get("step_seconds")]
    step_seconds = max(steps) if steps else None
    tps = setup.batch_size * setup.seq_len * nproc / step_seconds if step_seconds else None
    rank_notes = tuple(dict.fromkeys(n for r in ranks for n in r.get("notes", [])))
    backend = "nccl" if ctx.device.startswith("cuda") else "gloo"
    detail = ctx.detail(master_weight_bytes=max(n.master_weight_bytes for n in numbers),
                        saved_tensor_bytes=max(n.saved_tensor_bytes for n in numbers),
                        baseline_bytes=max(n.baseline_bytes for n in numbers), phase_peaks=dict(worst.phase_peaks),
                        wall_seconds=wall, total_params_built=ranks[0].get("total_params"),
                        notes=rank_notes + (f"{nproc} processes ({backend}), {wrapper_name(setup.zero_stage, setup.sharding_impl)}; "
                                            "tokens/s over all ranks",))
    return MeasureResult("run", ctx.device, "ok", model_info(ctx.spec), setup, ctx.method.name,
                         ranks[0].get("trainable_params"), Bytes.max_of([p.measured for p in per_rank]),
                         worst.peak_phase, ctx.predicted, None, step_seconds, tps, per_rank, ctx.environment, detail)


def measured_collectives(calls: list[dict[str, Any]], nproc: int) -> CollectiveBytes:
    """A rank's recorded c10d calls, by kind, with the bytes it sends under the ring algorithm."""
    from peftcalc.collectives import Collective, Group, Kind, Phase

    by_kind: dict[str, dict[str, int]] = {}
    for c in calls:
        sent = Collective(Kind(c["kind"]), Group.DP, nproc, Phase.FORWARD, c["payload_bytes"], 1, "").sent_bytes
        d = by_kind.setdefault(c["kind"], {"calls": 0, "payload_bytes": 0, "sent_bytes": 0})
        d["calls"] += 1
        d["payload_bytes"] += c["payload_bytes"]
        d["sent_bytes"] += sent
    return CollectiveBytes.of(by_kind)


def predicted_collectives(spec: ModelSpec, method: Method, setup: Setup) -> CollectiveBytes | None:
    """The analytic volume of one step on one rank (peftcalc/collectives.py); None if the estimate fails."""
    from peftcalc.collectives import step_volume

    try:
        return CollectiveBytes.of(step_volume(method.adapt(spec), setup).by_kind())
    except PeftcalcError:
        return None


def wrapper_name(zero_stage: int, sharding: str = "fsdp2") -> str:
    if zero_stage == 3 and sharding == "fsdp1":
        return "FSDP1 FullyShardedDataParallel(FULL_SHARD)"
    return {0: "DDP", 2: "FSDP2 fully_shard(reshard_after_forward=False)", 3: "FSDP2 fully_shard"}[zero_stage]


# ---- the worker (one rank) ---------------------------------------------------------------------------------

def _blocks(model: Any, spec: ModelSpec) -> list[Any]:
    from peftcalc.measure.adapted import base_model

    base = base_model(model)
    return [base.get_submodule(prefix.replace("{i}", str(i)))
            for prefix, count in spec.layer_prefixes() for i in range(count)]


def _wrap(model: Any, spec: ModelSpec, setup: Setup, device: Any) -> Any:
    import torch

    if setup.zero_stage == 0:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if setup.sharding_impl == "fsdp1":
        return _wrap_fsdp1(model, spec, device)
    from torch.distributed.fsdp import fully_shard

    reshard = setup.zero_stage == 3
    for block in _blocks(model, spec):
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    del torch
    return model


def _wrap_fsdp1(model: Any, spec: ModelSpec, device: Any) -> Any:
    import functools

    from torch.distributed.fsdp import BackwardPrefetch, FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if hasattr(model, "peft_config"):
        from peft.utils.other import fsdp_auto_wrap_policy

        policy = fsdp_auto_wrap_policy(model)
    else:
        policy = functools.partial(transformer_auto_wrap_policy,
                                   transformer_layer_cls={type(b) for b in _blocks(model, spec)})
    return FullyShardedDataParallel(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=policy,
                                    backward_prefetch=BackwardPrefetch.BACKWARD_PRE, use_orig_params=False,
                                    limit_all_gathers=True, device_id=device)


def _one_step(prep: Any) -> None:
    """The step after the measured one, whose collectives are recorded: DDP rebuilds its gradient buckets at the start
    of the second step (the measured one), broadcasting their new order from rank 0 once
    (torch/nn/parallel/distributed.py `_rebuild_buckets`); from the third step on, every step is the same."""
    loss = prep.forward_loss()
    loss.backward()
    del loss
    prep.optimizer.step()
    prep.optimizer.zero_grad(set_to_none=True)


def _worker(request_path: str, out_dir: str) -> int:
    import torch
    import torch.distributed as dist

    from peftcalc.measure.meter import CollectiveLog, LiveMeter
    from peftcalc.measure.run import _sync, _timed_steps, is_oom
    from peftcalc.measure.adapted import build_adapted
    from peftcalc.measure.step import measured_step, prepare_training
    from peftcalc.measure.trace import model_facts

    req = pickle.loads(Path(request_path).read_bytes())
    spec, method, setup, dev = req["spec"], req["method"], req["setup"], req["device"]
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    out: dict[str, Any] = {"rank": rank, "status": "ok"}
    try:
        torch.manual_seed(0)
        model, _, notes = build_adapted(spec, method, setup, device=device)
        out.update(model_facts(model))
        trainable = [p for p in model.parameters() if p.requires_grad]
        model = _wrap(model, spec, setup, device)
        if setup.zero_stage != 0:
            trainable = [p for p in model.parameters() if p.requires_grad]  # now sharded DTensors
        prep = prepare_training(model, spec, setup, device, notes, trainable=trainable)
        sync = _sync(dev)
        numbers = measured_step(prep, LiveMeter(device_type="cuda" if cuda else None), sync=sync)
        out["numbers"] = asdict(numbers)
        with CollectiveLog() as log:
            _one_step(prep)
        out["collectives"] = [asdict(c) for c in log.calls]
        out["step_seconds"] = _timed_steps(prep, req.get("timed_steps", 2), sync) or numbers.step_seconds
        out["notes"] = prep.notes
    except PeftcalcError as e:
        out.update(status="unsupported", error=str(e))
    except Exception as e:  # noqa: BLE001 - each rank reports its failure to the parent
        out.update(status="oom" if is_oom(e) else "error", error=f"{type(e).__name__}: {e}"[:2000])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    return 0 if out["status"] == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="peftcalc distributed worker (started by torchrun; not for direct use)")
    ap.add_argument("--worker", nargs=2, metavar=("REQUEST", "OUT_DIR"), required=True)
    args = ap.parse_args(argv)
    return _worker(*args.worker)


if __name__ == "__main__":
    sys.exit(main())
