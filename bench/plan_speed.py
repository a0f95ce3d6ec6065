"""Benchmark: how long `peftcalc plan` takes for 10 GPUs x 8 methods with every limit searched, against a bare
`python -c "import click"` measured alternately in the same run.

Run:  python bench/plan_speed.py [--repeats 11]

"Full-limit search" = for each (GPU, method): the verdict at the setup asked (and the fewest remedies if it does
not fit), the largest micro-batch and the longest sequence that fit, the fewest GPUs for each of the six
strategies up to --max-gpus 8, and the same limits for every option listed. The command is the whole CLI
(process start, imports, search, JSON rendering). Target: under 1 s end to end (interactive).
Also reported: the in-process plan time, and how many distinct setups the analytic model evaluated.
Where PYTHONDONTWRITEBYTECODE=1 is set (as in this project's sandbox), every run recompiles every module
(~15 ms for planner.py alone); `env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc python
bench/plan_speed.py` measures with bytecode caching, as an installed package runs. The ratio to the bare
click import is the figure that survives machine load; the absolute one moves with it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

GPUS = ("h200", "h100-80gb", "a100-80gb", "a100-40gb", "l40s", "a6000", "rtx-4090", "rtx-3090", "l4", "t4")
METHODS = ("full", "lora", "qlora", "dora", "adapter", "prompt", "prefix", "ia3")
ARGS = ["plan", "--model", "llama-2-7b", "--precision", "bf16-mixed", "--batch", "4", "--seq", "2048",
        "--max-gpus", "8", "--tokens", "1e8", "--json",
        *[a for g in GPUS for a in ("--gpu", g)], *[a for m in METHODS for a in ("--method", m)]]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def in_process(repeats: int) -> tuple[float, float, int, int]:
    """(first and median seconds of plan() alone, distinct setups evaluated, options), a fresh evaluator each
    time; the first call also fills estimate.py's caches (adaptations, model states)."""
    from peftcalc.hardware.catalogue import get_gpu
    from peftcalc.hardware.planner import PlanRequest, plan
    from peftcalc.model.catalogue import get_model
    from peftcalc.setup import Setup

    request = PlanRequest(get_model("llama-2-7b"), Setup(precision="bf16-mixed", batch_size=4, seq_len=2048),
                          tuple(get_gpu(g) for g in GPUS), METHODS, max_gpus=8, tokens=10**8)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        p = plan(request)
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times), p.evaluations, len(p.options)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "peftcalc", *ARGS]
    click = [sys.executable, "-c", "import click"]
    wall(cli), wall(click)  # warm the file cache
    a, b = [], []
    for _ in range(args.repeats):
        a.append(wall(cli))
        b.append(wall(click))
    cli_ms, click_ms = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    cold_s, core_s, evaluations, options = in_process(args.repeats)
    print(f"peftcalc plan, {len(GPUS)} GPUs x {len(METHODS)} methods, full-limit search, --json:")
    print(f"  end to end (CLI process):     {cli_ms:.0f} ms (median of {args.repeats}; target < 1000 ms)")
    print(f"  python -c 'import click':     {click_ms:.0f} ms (median of {args.repeats})")
    print(f"  ratio plan / bare click:      {cli_ms / click_ms:.2f}x")
    print(f"  plan() alone, in process:     {cold_s * 1e3:.0f} ms first, {core_s * 1e3:.0f} ms median "
          f"({evaluations:,} distinct setups evaluated, {options} options)")
    if cli_ms >= 1000:
        print("  OVER the 1 s interactive target")
        sys.exit(1)


if __name__ == "__main__":
    main()
