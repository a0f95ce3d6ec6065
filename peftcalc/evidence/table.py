"""The committed table of predictions, one JSON line per published record (bench/published/predictions.jsonl):
what today's estimate says for each record's run, or why it says nothing. A test recomputes every line; when
the model changes, regenerate it with REGENERATE and commit the difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftcalc.evidence.compare import PublishedComparison
from peftcalc.evidence.load import REPO_ROOT

PREDICTIONS_FILE = REPO_ROOT / "bench" / "published" / "predictions.jsonl"
REGENERATE = "peftcalc validate --published --write-predictions bench/published/predictions.jsonl"


def prediction_row(c: PublishedComparison) -> dict[str, Any]:
    p = c.predicted
    row: dict[str, Any] = {"id": c.record.id, "quantity": c.record.quantity, "measured_bytes": c.measured_bytes}
    if p is None:
        row["not_predicted"] = c.reason
        return row
    row.update(compared_with=c.compared_with, predicted_bytes=c.predicted_bytes,
               error_percent=round(c.error_percent or 0.0, 2), tensor_peak=p.tensor_peak, allocated=p.allocated,
               reserved=p.reserved, total=p.total, phase=p.phase)
    return row


def predictions_text(comparisons: list[PublishedComparison]) -> str:
    return "".join(json.dumps(prediction_row(c), sort_keys=False) + "\n" for c in comparisons)


def read_predictions(path: Path = PREDICTIONS_FILE) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r for r in rows}
