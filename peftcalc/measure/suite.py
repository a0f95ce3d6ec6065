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
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from peftcalc.errors import PeftcalcError
from peftcalc.results.files import Record, append_line, read_lines
from peftcalc.results.record import Detail, Environment, MeasureResult
from peftcalc.results.request import DEFAULTS, RUN_KEYS, RunRequest, portable_key

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    runs: tuple[RunRequest, ...]
    time_budget_s: float | None = None


def run_label(run: RunRequest) -> str:
    """`trace gpt2 lora bf16 b1xs512 foreach`: the backend, then the run's own label."""
    return f"{run.backend} {run.label}"


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
    runs: dict[str, RunRequest] = {}
    for i, m in enumerate(matrices):
        where = f"{p} [[matrix]] #{i + 1}"
        for run in _expand(m, defaults, excludes, p.parent, where):
            runs.setdefault(run.key, run)
    budget = data.get("time_budget_s")
    return Suite(name, str(data.get("description", "")), p, tuple(runs.values()), float(budget) if budget else None)


def _expand(matrix: dict[str, Any], defaults: dict[str, Any], excludes: list[dict[str, Any]], folder: Path,
            where: str) -> list[RunRequest]:
    """The runs of one [[matrix]] entry: every combination of its axes, less the excluded ones."""
    _check_keys(matrix, where)
    if ("model" in matrix) == ("config" in matrix):
        raise PeftcalcError(f"{where}: give exactly one of model = [...] or config = [...]")
    if "method" not in matrix and "method" not in defaults:
        raise PeftcalcError(f"{where}: no method")
    merged = {**defaults, **matrix}
    if "config" in matrix:
        merged["config"] = [str((folder / c).resolve()) for c in _as_list(matrix["config"])]
    axes = [(k, _as_list(v)) for k, v in merged.items()]
    runs = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        keys = {k: v for (k, _), v in zip(axes, combo)}
        if any(all(keys.get(k) == v for k, v in ex.items()) for ex in excludes):
            continue
        try:
            runs.append(RunRequest.from_keys(keys))
        except PeftcalcError as e:
            raise PeftcalcError(f"{where}: {e}") from None
    return runs


# ---- running ---------------------------------------------------------------------------------------------

def execute(run: RunRequest) -> MeasureResult:
    """Trace or measure one run (never raises for a bad model or method: the result says what failed)."""
    from peftcalc.measure.api import measure
    from peftcalc.methods import make_method
    from peftcalc.results.predict import spec_of

    return measure(spec_of(run), make_method(run.method, run.options), run.setup, backend=run.backend,
                   nproc=run.nproc, save_checkpoint=run.save_checkpoint, timed_steps=run.timed_steps)


def run_uses_bitsandbytes(run: RunRequest) -> bool:
    from peftcalc.methods import make_method
    from peftcalc.optim import get_optimizer

    method = make_method(run.method, run.options)
    return getattr(method, "quantization", None) is not None or get_optimizer(run.setup.optimizer).bitsandbytes


def bitsandbytes_version() -> str | None:
    try:
        import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes.__version__


def current_environment(backend: str) -> Environment:
    from peftcalc.measure.outcome import environment
    from peftcalc.measure.run import default_device

    return environment("cpu" if backend == "trace" else default_device())


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
              runner: Callable[[RunRequest], MeasureResult] = execute,
              environment_of: Callable[[str], Environment] = current_environment,
              progress: Callable[[int, int, RunRequest, str], None] | None = None) -> Summary:
    """Run every run of `suite` not yet recorded for this environment, appending each result as it comes."""
    out = results_path(suite, results_dir)
    runs = [r for r in suite.runs if only is None or only in run_label(r)]
    done = _recorded(out)
    envs: dict[str, Environment] = {}
    budget = time_budget_s if time_budget_s is not None else suite.time_budget_s
    summary = Summary(total=len(runs))
    t0 = time.perf_counter()
    for i, run in enumerate(runs, 1):
        env = envs.setdefault(run.backend, environment_of(run.backend))
        if run_uses_bitsandbytes(run) and env.bitsandbytes is None:
            env = replace(env, bitsandbytes=bitsandbytes_version())
        status = done.get((run.key, env.key()))
        if status is not None and not (retry_failed and status == "error"):
            summary.skipped += 1
            note = "skipped (recorded)"
        elif budget is not None and time.perf_counter() - t0 > budget:
            summary.not_started += 1
            note = "not started (time budget)"
        else:
            start = time.perf_counter()
            status = _run_one(suite, run, env, runner, out)
            summary.ran += 1
            summary.statuses[status] = summary.statuses.get(status, 0) + 1
            note = f"{status} ({time.perf_counter() - start:.1f} s)"
            gc.collect()
        if progress:
            progress(i, len(runs), run, note)
    summary.seconds = time.perf_counter() - t0
    return summary


def _recorded(out: Path) -> dict[tuple[str, tuple[str, ...]], str]:
    """(run key, environment key) -> status of every run already in the results file."""
    done = {}
    for _, obj in read_lines(out):
        if "run_key" in obj:
            done[(portable_key(obj["run_key"]), Environment.from_dict(obj.get("environment")).key())] = \
                obj.get("status", "")
    return done


def _run_one(suite: Suite, run: RunRequest, env: Environment, runner: Callable[[RunRequest], MeasureResult],
             out: Path) -> str:
    """Run, record durably, return the status; a runner that raises is recorded as a failure."""
    start = time.perf_counter()
    try:
        result = runner(run)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded; the suite goes on
        status = "unsupported" if isinstance(e, PeftcalcError) else "error"
        result = MeasureResult(run.backend, "", status, None, run.setup, run.method, None, None, None, None, None,
                               None, None, (), env, Detail(error=f"{type(e).__name__}: {e}"[:2000]))
    record = Record(result, run, suite.name, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    round(time.perf_counter() - start, 3))
    append_line(out, record.to_dict())
    return result.status


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m peftcalc.measure.suite SUITE.toml [--results-dir DIR]`: the same as `peftcalc bench`, without click."""
    ap = argparse.ArgumentParser(prog="python -m peftcalc.measure.suite", description=main.__doc__)
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
            print(run_label(r))
        return 0

    def show(i: int, n: int, run: RunRequest, status: str) -> None:
        print(f"[{i}/{n}] {run_label(run)}: {status}", flush=True)

    s = run_suite(suite, args.results_dir, args.retry_failed, args.time_budget, args.only, progress=show)
    print(f"{s.ran} ran, {s.skipped} already recorded, {s.not_started} left by the time budget; "
          f"statuses {s.statuses}; {s.seconds:.0f} s -> {results_path(suite, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
