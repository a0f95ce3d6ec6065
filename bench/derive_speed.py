"""Benchmark: an uncatalogued architecture's inventory, first (derived with transformers) and cached, its first
estimate (the default table's activation profiles traced, the inventory already cached) and the same estimate
again (profiles cached), a catalogue model's shipped inventory and estimate, and the refusal of sizes no real model has, each against a bare `import click` in the
same run (ratios, and the peak memory of each process).

Run:  python bench/derive_speed.py [--repeats 5] [--config PATH]
The uncatalogued model is a 7B config (default: OLMo-2 7B's from the catalogue with 30 layers instead of 32, written
to a temporary folder: no catalogue entry, inventory or profile matches it); the first run of each repeat starts from an empty cache (XDG_CACHE_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Reports the child's wall time and peak resident memory (ru_maxrss of the only child it waited for).
WRAP = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env, check=True)
    seconds, kib, rc = out.stdout.split()
    return float(seconds), int(kib), int(rc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", help="a 7-8B config.json without a hand-written family")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftcalc-bench-"))
    cfg_path = Path(args.config) if args.config else work / "olmo2-7b" / "config.json"
    if not args.config:
        cfg_path.parent.mkdir()
        entry = json.loads((ROOT / "peftcalc/model/catalogue/olmo-2-1124-7b-instruct.json").read_text())
        config = dict(entry["config"], num_hidden_layers=30)  # not the catalogue's config: nothing shipped for it
        cfg_path.write_text(json.dumps(config))
    layers = work / "layers" / "config.json"
    layers.parent.mkdir()
    layers.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10**6}))
    peftcalc = [sys.executable, "-m", "peftcalc"]
    cases = {
        "import click": [sys.executable, "-c", "import click"],
        "first inventory (derive, 7-8B)": peftcalc + ["models", "--config", str(cfg_path)],
        "cached inventory": peftcalc + ["models", "--config", str(cfg_path)],
        "first estimate (9 profiles traced)": peftcalc + ["estimate", "--config", str(cfg_path)],
        "same estimate again (cached)": peftcalc + ["estimate", "--config", str(cfg_path)],
        "catalogue qwen3-8b (shipped)": peftcalc + ["models", "--model", "qwen3-8b"],
        "estimate qwen3-8b (shipped profiles)": peftcalc + ["estimate", "--model", "qwen3-8b"],
        "estimate --params 1e14 (refused)": peftcalc + ["estimate", "--params", "1e14"],
        "config with 10^6 layers (refused)": peftcalc + ["estimate", "--config", str(layers)],
    }
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in cases}
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPATH": str(ROOT)}
    for i in range(args.repeats + 1):  # the first round warms the file cache and bytecode; not counted
        env["XDG_CACHE_HOME"] = str(work / f"cache-{i}")  # empty: the first inventory derives
        for name, cmd in cases.items():
            seconds, kib, rc = measure(cmd, env)
            if i:
                results[name].append((seconds, kib))
    base = statistics.median(s for s, _ in results["import click"])
    print(f"{'':38s} {'median s':>9s} {'x click':>8s} {'peak MiB':>9s}")
    for name, rows in results.items():
        med = statistics.median(s for s, _ in rows)
        print(f"{name:38s} {med:9.2f} {med / base:8.1f} {max(k for _, k in rows) / 1024:9.0f}")


if __name__ == "__main__":
    main()
