"""The band printed beside every estimate's peak: how far the analytic model has been from measured steps of
the same kind. Attached above the estimate (the CLI, the reports), never inside it: the core does not read
validation data.

The band comes from `peftcalc/data/validation_history.json`, which `peftcalc validate --write-history PATH`
writes from the committed results: per kind of setup (method, "+ckpt" for gradient checkpointing), the
number of runs and the largest |peak error|.

    >>> band("lora", False).text()     # doctest: +SKIP
    '±0.1 %, from 45 traced runs'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping

from peftcalc.estimate import Estimate

HISTORY_FILE = os.path.join(os.path.dirname(__file__), "data", "validation_history.json")  # (os.path: no pathlib to import)
MIN_PERCENT = 0.1  # a band is never printed narrower than the history's rounding


@dataclass(frozen=True)
class Uncertainty:
    """The worst relative error of the validated runs of one kind."""

    percent: float
    runs: int
    kind: str  # the group it comes from ("lora +ckpt", "lora", or "all")

    def text(self) -> str:
        return f"±{self.percent:.1f} %, from {self.runs} traced run{'s' if self.runs != 1 else ''}"

    def short(self) -> str:
        return f"±{self.percent:.1f} % ({self.runs} runs)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def setup_kind(method: str, checkpointing: bool) -> str:
    """The groups bands are kept by: the method, and whether activations are checkpointed."""
    return f"{method}{' +ckpt' if checkpointing else ''}"


@lru_cache(maxsize=1)
def _history() -> Mapping[str, Any]:
    try:
        with open(HISTORY_FILE, encoding="utf-8") as f:
            return json.load(f).get("kinds", {})
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=256)
def band(method: str, checkpointing: bool) -> Uncertainty | None:
    """The band for this kind of setup: its own kind, else the method's runs, else all runs; None without
    any history."""
    kinds = _history()
    for k in (setup_kind(method, checkpointing), method, "all"):
        h = kinds.get(k)
        if h and h.get("runs"):
            return Uncertainty(max(float(h["max_percent"]), MIN_PERCENT), int(h["runs"]), k)
    return None


def bands(est: Estimate) -> dict[str, Uncertainty | None]:
    """Each method's band in this estimate."""
    return {r.method: band(r.method, est.setup.gradient_checkpointing) for r in est.results}
