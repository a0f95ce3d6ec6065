"""Benchmark suites as data: a TOML matrix of runs, each traced or measured, one JSON line per run.

A suite file (bench/suites/*.toml):

    name = "cpu-small"                      # results go to <results dir>/<name>.jsonl
    description = "..."
    time_budget_s = 900                     # optional: start no run after this many seconds

    [defaults]                              # any run key; the values below are the built-in defaults
    backend = "trace"                       # trace | run
    precision = "bf16"
    seq = 512
    batch = 1

    [[matrix]]                              # each key: one value or a list (an axis); axes multiply
    model = ["llama-2-7b", "gpt2-xl"]       # catalogue names; or config = ["path/to/config.json"]
    method = ["full", "lora"]
    seq = [512, 2048]
    gradient_checkpointing = [false, true]

    [[exclude]]                             # drop every run matching all keys given
    method = "prefix"
    gradient_checkpointing = true

Run keys: backend, model | config, method, precision, batch, seq, gradient_checkpointing, attention, adamw_impl,
nproc, zero, rank, targets, virtual_tokens, bottleneck, adapter_variant, prefix_projection, quant_bits,
save_checkpoint, timed_steps. A config path is relative to the suite file. `targets` is one comma-separated
string ("q_proj,v_proj"); a list of strings is an axis like any other.

Results: one JSON object per line — `MeasureResult.to_dict()` plus "suite", "run" (the run's keys) and
"run_key" — appended with one `os.write` of the whole line, then `fsync`. A run killed mid-write can leave a
partial last line; readers skip it and the next append cuts it off first, so a results file never breaks.
Resume: a run already recorded with the same run key on the same environment (torch, transformers and peft
versions and device name; not the git commit) is skipped; `retry_failed` re-runs recorded errors. A failed or
out-of-memory run is recorded and the suite goes on.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from peftcalc.errors import PeftcalcError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULTS: dict[str, Any] = {
    "backend": "trace", "precision": "bf16", "batch": 1, "seq": 512, "gradient_checkpointing": False,
    "attention": "sdpa", "adamw_impl": "foreach", "nproc": 1, "zero": 0, "rank": 8, "targets": None,
    "virtual_tokens": 20, "bottleneck": 64, "adapter_variant": "houlsby", "prefix_projection": False,
    "quant_bits": 4, "save_checkpoint": True, "timed_steps": 2,
}
RUN_KEYS = ("model", "config", "method", *DEFAULTS)
NOT_IN_KEY = ("save_checkpoint", "timed_steps")  # how a run is executed, not what it measures


@dataclass(frozen=True)
class Run:
    params: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def key(self) -> str:
        return json.dumps({k: v for k, v in self.params if k not in NOT_IN_KEY}, sort_keys=True,
                          separators=(",", ":"))

    @property
    def label(self) -> str:
        p = self.p
        model = p.get("model") or Path(str(p.get("config"))).parent.name or p.get("config")
        bits = [str(p["backend"]), str(model), str(p["method"]), str(p["precision"]), f"b{p['batch']}xs{p['seq']}"]
        if p["gradient_checkpointing"]:
            bits.append("ckpt")
        if p["attention"] != "sdpa":
            bits.append(str(p["attention"]))
        bits.append(str(p["adamw_impl"]))
        if p["nproc"] > 1:
            bits.append(f"nproc{p['nproc']} zero{p['zero']}")
        return " ".join(bits)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    runs: tuple[Run, ...]
    time_budget_s: float | None = None


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def _check_keys(d: dict[str, Any], where: str) -> None:
    unknown = sorted(set(d) - set(RUN_KEYS))
    if unknown:
        raise PeftcalcError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(RUN_KEYS)}")


def load_suite(path: str | Path) -> Suite:
    """Read and expand a suite file; errors name the file and the entry."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftcalcError(f"suite file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise PeftcalcError(f"{p} is not valid TOML: {e}") from None
    name = data.get("name") or p.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise PeftcalcError(f"{p}: name must be a plain word (letters, digits, - _ .), got {name!r}")
    defaults = dict(DEFAULTS)
    user_defaults = data.get("defaults", {})
    _check_keys(user_defaults, f"{p} [defaults]")
    defaults.update(user_defaults)
    matrices = data.get("matrix")
    if not matrices:
        raise PeftcalcError(f"{p}: no [[matrix]] entries")
    excludes = data.get("exclude", [])
    for i, ex in enumerate(excludes):
        _check_keys(ex, f"{p} [[exclude]] #{i + 1}")
    runs: list[Run] = []
    seen: set[str] = set()
    for i, m in enumerate(matrices):
        where = f"{p} [[matrix]] #{i + 1}"
        _check_keys(m, where)
        if ("model" in m) == ("config" in m):
            raise PeftcalcError(f"{where}: give exactly one of model = [...] or config = [...]")
        if "method" not in m and "method" not in defaults:
            raise PeftcalcError(f"{where}: no method")
        merged = {**defaults, **m}
        if "config" in m:
            merged["config"] = [str((p.parent / c).resolve()) for c in _as_list(m["config"])]
        axes = [(k, _as_list(v)) for k, v in merged.items()]
        for combo in itertools.product(*[vals for _, vals in axes]):
            params = {k: v for (k, _), v in zip(axes, combo)}
            if any(all(params.get(k) == v for k, v in ex.items()) for ex in excludes):
                continue
            run = Run(tuple(sorted(params.items(), key=lambda kv: kv[0])))
            if run.key not in seen:
                seen.add(run.key)
                runs.append(run)
    budget = data.get("time_budget_s")
    return Suite(name, str(data.get("description", "")), p, tuple(runs), float(budget) if budget else None)


# ---- the results file -------------------------------------------------------------------------------------

def repair_tail(path: Path) -> None:
    """Cut off a partial last line left by a writer killed mid-write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1  # 0 when the only line is partial
        f.truncate(cut)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line durably: the whole line in one write, then flush to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a results file; a partial or broken line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def env_key(env: dict[str, Any]) -> tuple[Any, ...]:
    return (env.get("torch"), env.get("transformers"), env.get("peft"), env.get("device_name"))


# ---- running ---------------------------------------------------------------------------------------------

def execute(run: Run) -> dict[str, Any]:
    """Trace or measure one run; returns the result dict (never raises for a bad model or method)."""
    from peftcalc.measure.api import measure
    from peftcalc.methods import MethodOptions, make_method
    from peftcalc.methods.targets import parse_targets
    from peftcalc.setup import Setup

    p = run.p
    if p.get("model"):
        from peftcalc.model.catalogue import get_model

        spec = get_model(p["model"])
    else:
        from peftcalc.model.hf_config import load_config

        spec = load_config(p["config"])
    options = MethodOptions(rank=p["rank"], targets=parse_targets(p.get("targets")),
                            virtual_tokens=p["virtual_tokens"], bottleneck=p["bottleneck"],
                            adapter_variant=p["adapter_variant"], prefix_projection=p["prefix_projection"],
                            quant_bits=int(p["quant_bits"]))
    method = make_method(p["method"], options)
    setup = Setup(precision=p["precision"], batch_size=p["batch"], seq_len=p["seq"],
                  gradient_checkpointing=p["gradient_checkpointing"], attention=p["attention"],
                  adamw_impl=p["adamw_impl"], zero_stage=p["zero"])
    result = measure(spec, method, setup, backend=p["backend"], nproc=p["nproc"],
                     save_checkpoint=p["save_checkpoint"], timed_steps=p["timed_steps"])
    return result.to_dict()


def current_environment(backend: str) -> dict[str, Any]:
    from peftcalc.measure.api import environment
    from peftcalc.measure.run import default_device

    return environment("cpu" if backend == "trace" else default_device()).to_dict()


@dataclass
class Summary:
    total: int
    ran: int = 0
    skipped: int = 0
    not_started: int = 0  # left for later by the time budget
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def results_path(suite: Suite, results_dir: str | Path | None) -> Path:
    base = Path(results_dir) if results_dir is not None else suite.path.resolve().parent.parent / "results"
    return base / f"{suite.name}.jsonl"


def run_suite(suite: Suite, results_dir: str | Path | None = None, retry_failed: bool = False,
              time_budget_s: float | None = None, only: str | None = None,
              runner: Callable[[Run], dict[str, Any]] = execute,
              environment_of: Callable[[str], dict[str, Any]] = current_environment,
              progress: Callable[[int, int, Run, str], None] | None = None) -> Summary:
    """Run every run of `suite` not yet recorded for this environment, appending each result as it comes."""
    out = results_path(suite, results_dir)
    runs = [r for r in suite.runs if only is None or only in r.label]
    done: dict[tuple[str, tuple[Any, ...]], str] = {}
    for rec in read_records(out):
        if "run_key" in rec:
            done[(rec["run_key"], env_key(rec.get("environment") or {}))] = rec.get("status", "")
    envs: dict[str, dict[str, Any]] = {}
    budget = time_budget_s if time_budget_s is not None else suite.time_budget_s
    summary = Summary(total=len(runs))
    t0 = time.perf_counter()
    for i, run in enumerate(runs, 1):
        backend = run.p["backend"]
        if backend not in envs:
            envs[backend] = environment_of(backend)
        status = done.get((run.key, env_key(envs[backend])))
        if status is not None and not (retry_failed and status == "error"):
            summary.skipped += 1
            if progress:
                progress(i, len(runs), run, "skipped (recorded)")
            continue
        if budget is not None and time.perf_counter() - t0 > budget:
            summary.not_started += 1
            if progress:
                progress(i, len(runs), run, "not started (time budget)")
            continue
        start = time.perf_counter()
        try:
            record = runner(run)
        except Exception as e:  # noqa: BLE001 - a failed run is recorded; the suite goes on
            status_name = "unsupported" if isinstance(e, PeftcalcError) else "error"
            record = {"backend": backend, "status": status_name, "environment": envs[backend],
                      "detail": {"error": f"{type(e).__name__}: {e}"[:2000]}}
        record.update(suite=suite.name, run=run.p, run_key=run.key,
                      recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      run_seconds=round(time.perf_counter() - start, 3))
        append_record(out, record)
        st = str(record.get("status"))
        summary.ran += 1
        summary.statuses[st] = summary.statuses.get(st, 0) + 1
        if progress:
            progress(i, len(runs), run, f"{st} ({time.perf_counter() - start:.1f} s)")
        gc.collect()
    summary.seconds = time.perf_counter() - t0
    return summary


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m peftcalc.measure.bench SUITE.toml [--results-dir DIR]`: the same as `peftcalc bench`, without click."""
    ap = argparse.ArgumentParser(prog="python -m peftcalc.measure.bench", description=main.__doc__)
    ap.add_argument("suite")
    ap.add_argument("--results-dir", default=None, help="where <suite>.jsonl goes (default: bench/results)")
    ap.add_argument("--retry-failed", action="store_true", help="re-run runs recorded with status error")
    ap.add_argument("--time-budget", type=float, default=None, help="start no run after this many seconds")
    ap.add_argument("--only", default=None, help="only runs whose label contains this text")
    ap.add_argument("--list", action="store_true", help="list the runs and exit")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        suite = load_suite(args.suite)
    except PeftcalcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for r in suite.runs:
            print(r.label)
        return 0

    def show(i: int, n: int, run: Run, status: str) -> None:
        print(f"[{i}/{n}] {run.label}: {status}", flush=True)

    s = run_suite(suite, args.results_dir, args.retry_failed, args.time_budget, args.only, progress=show)
    print(f"{s.ran} ran, {s.skipped} already recorded, {s.not_started} left by the time budget; "
          f"statuses {s.statuses}; {s.seconds:.0f} s -> {results_path(suite, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
