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
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from peftcalc.estimate import Estimate

HISTORY_FILE = Path(__file__).with_name("data") / "validation_history.json"
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
        return json.loads(HISTORY_FILE.read_text(encoding="utf-8")).get("kinds", {})
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
