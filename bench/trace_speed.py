"""How fast the tracer is, and how little memory it needs: Llama-2-7B LoRA at 2048 tokens, and 70B steps.

    PYTHONPATH=. python bench/trace_speed.py [--out bench/results/trace_speed.json]

Each case runs in a fresh process (so its peak RSS is its own) and reports: the import time of torch +
transformers + peft, the wall time of `measure(..., backend="trace")` (build on meta, peft, fake tensors,
optimizer warm-up, the measured step, checkpoint bytes), the traced peak, and the process's peak RSS.
The issue asks for < 30 s for the 7B LoRA step on a 2-core machine, and for a 70B step to trace at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = (
    ("llama-2-7b", "lora", "bf16", 2048),
    ("llama-2-7b", "full", "bf16-mixed", 2048),
    ("llama-2-70b", "lora", "bf16", 2048),
    ("llama-2-70b", "full", "bf16-mixed", 2048),
)

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch, transformers, peft  # noqa: F401
t_import = time.perf_counter() - t0
from peftcalc.measure.api import measure
from peftcalc.methods import make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup
model, method, precision, seq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t1 = time.perf_counter()
r = measure(get_model(model), make_method(method), Setup(precision=precision, seq_len=seq), "trace")
t_trace = time.perf_counter() - t1
print(json.dumps({"model": model, "method": method, "precision": precision, "seq": seq, "status": r.status,
                  "import_seconds": round(t_import, 2), "trace_seconds": round(t_trace, 2),
                  "traced_peak_bytes": r.measured.peak if r.measured else None,
                  "predicted_peak_bytes": r.predicted.peak if r.predicted else None,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "error": r.detail.error}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the results as JSON to this file")
    args = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rows = []
    for case in CASES:
        proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, case)], capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            row = {"model": case[0], "method": case[1], "status": "crashed",
                   "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            row = json.loads(lines[-1])
        rows.append(row)
        gb = lambda n: f"{n / 1e9:7.2f} GB" if n else "      -"  # noqa: E731
        print(f"{row['model']:12} {row['method']:5} {row.get('precision', ''):10} seq {row.get('seq', '')}: "
              f"{row['status']:6} trace {row.get('trace_seconds', '-'):>6} s (+ import {row.get('import_seconds', '-')} s)"
              f"  traced peak {gb(row.get('traced_peak_bytes'))}  peak RSS {gb(row.get('peak_rss_bytes'))}",
              flush=True)
    if args.out:
        import torch

        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
                "load_average": os.getloadavg()}
        Path(args.out).write_text(json.dumps({"environment": meta, "cases": rows}, indent=2) + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
