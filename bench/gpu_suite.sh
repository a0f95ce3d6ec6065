#!/usr/bin/env bash
# Run the GPU benchmark suite from a checkout, without installing peftcalc.
#
#   bench/gpu_suite.sh OUT_DIR [SUITE.toml]
#
# Needs python with torch (CUDA), transformers, peft (and safetensors, which transformers brings). Writes
# OUT_DIR/<suite name>.jsonl (one JSON line per run, appended as each run finishes) and OUT_DIR/gpu_suite.log.
# Runs already recorded in OUT_DIR for the same environment are skipped, so a second call resumes.
# bench/suites/gpu.toml is sized for one H100/H200-class GPU: under 8 minutes (its time budget stops starting
# new runs after 400 s). SUITE overrides the suite file (the tests run this script on the CPU with a tiny one).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SUITE="${2:-$ROOT/bench/suites/gpu.toml}"
PYTHON="${PYTHON:-python}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'PY'
import sys
try:
    import torch, transformers, peft  # noqa: F401
except ImportError as e:
    sys.exit(f"gpu_suite.sh: missing a dependency: {e}")
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"cuda {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO (runs on the CPU)'}")
PY

cd "$ROOT"
"$PYTHON" -m peftcalc.measure.suite "$SUITE" --results-dir "$OUT" 2>&1 | tee -a "$OUT/gpu_suite.log"
exit "${PIPESTATUS[0]}"
