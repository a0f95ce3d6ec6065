"""Benchmark: how fast `peftcalc estimate` starts, against a bare `import click`, and estimates per second.

Run:  python bench/estimate_speed.py [--repeats 15]
Both commands run alternately so machine noise hits them alike; the figure that matters is the ratio
of medians (target: CLI within 1.5x of the bare click import; core above 20,000 estimates/s). Both run
with bytecode caching on, as an installed package does (pip compiles click's modules at install time;
ours are compiled by the warm-up run), even where PYTHONDONTWRITEBYTECODE is set in the environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CONSOLE_SCRIPT = "import re, sys; from peftcalc.cli import main; sys.argv[0] = 'peftcalc'; sys.exit(main())"


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t


def estimates_per_second(seconds: float = 2.0) -> tuple[float, float]:
    """(estimates/s over varied setups, cold estimate time in ms for a new model+method)."""
    from peftcalc.estimate import estimate_method
    from peftcalc.methods import DEFAULT_TABLE, make_method
    from peftcalc.model.catalogue import get_model
    from peftcalc.setup import Setup

    spec = get_model("llama-2-7b")
    t = time.perf_counter()
    estimate_method(get_model("llama-2-70b"), make_method("lora"), Setup())
    cold_ms = (time.perf_counter() - t) * 1e3
    methods = [make_method(m) for m in DEFAULT_TABLE]
    setups = [Setup(precision=p, batch_size=b, seq_len=s) for p in ("fp32", "bf16-mixed", "bf16")
              for b in (1, 2, 4, 8) for s in (256, 512, 1024, 2048, 4096)]
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for s in setups:
            for m in methods:
                estimate_method(spec, m, s)
                n += 1
    return n / (time.perf_counter() - t), cold_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    # What the installed `peftcalc` console script runs (pip's entry-point wrapper: import main, call it); peftcalc
    # runs from the source tree here, so `python -m peftcalc` would add runpy's own imports to the figure.
    cli = [sys.executable, "-c", CONSOLE_SCRIPT, "estimate", "--params", "7e9", "--rank", "8"]
    click = [sys.executable, "-c", "import click"]
    wall(cli), wall(click)  # warm the file cache
    a, b = [], []
    for _ in range(args.repeats):
        a.append(wall(cli))
        b.append(wall(click))
    cli_ms, click_ms = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    rate, cold_ms = estimates_per_second()
    print(f"peftcalc estimate --params 7e9 --rank 8: {cli_ms:.0f} ms (median of {args.repeats})")
    print(f"python -c 'import click':               {click_ms:.0f} ms (median of {args.repeats})")
    print(f"ratio CLI / bare click:                  {cli_ms / click_ms:.2f}x  (target <= 1.5x)")
    print(f"core estimates per second (one process): {rate:,.0f}  (target > 20,000)")
    print(f"first estimate of a new model+method:    {cold_ms:.1f} ms")


if __name__ == "__main__":
    main()
