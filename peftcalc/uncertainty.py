"""The band printed beside every estimate: how far the estimate has been from published GPU runs of the same
kind, or, where no GPU run of that kind is published, that only CPU traces back it. Attached above the
estimate (the CLI, the reports), never inside it: the core does not read validation data.

Two files, both shipped in the package and regenerated from committed data:

- `data/published_bands.json` (`peftcalc validate --published --write-bands PATH`): per kind (peftcalc's method,
  " +sharded" for several GPUs), the number of published GPU runs of transformers + peft (high and medium
  confidence) and the 90th percentile of their |error|, each in the quantity its source measured;
- `data/validation_history.json` (`peftcalc validate --write-history PATH`): per kind (method, " +ckpt"), the
  traced CPU steps and their largest |peak error|.

    >>> band("qlora", False).text()     # doctest: +SKIP
    '±9.1 %, vs 24 published GPU runs'
    >>> band("adapter", False).text()   # doctest: +SKIP
    'CPU traces only, no GPU evidence (±0.1 % vs 12 traced steps)'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping

from peftcalc.estimate import Estimate

DATA = os.path.join(os.path.dirname(__file__), "data")  # (os.path: the estimate path imports no pathlib)
HISTORY_FILE = os.path.join(DATA, "validation_history.json")
PUBLISHED_FILE = os.path.join(DATA, "published_bands.json")
MIN_PERCENT = 0.1  # a band is never printed narrower than the history's rounding


@dataclass(frozen=True)
class Uncertainty:
    """The error of the runs of one kind: published GPU runs (p90 |error|) or traced CPU steps (max)."""

    percent: float
    runs: int
    kind: str  # the group it comes from ("lora", "lora +sharded", "lora +ckpt", or "all")
    source: str = "traced"  # "published" (GPU runs) or "traced" (CPU traces only)

    def text(self) -> str:
        if self.source == "published":
            return f"±{self.percent:.1f} %, vs {self.runs} published GPU run{'s' if self.runs != 1 else ''}"
        return f"CPU traces only, no GPU evidence (±{self.percent:.1f} % vs {self.runs} traced steps)"

    def short(self) -> str:
        if self.source == "published":
            return f"±{self.percent:.1f} % ({self.runs} GPU runs)"
        return "CPU traces only"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def setup_kind(method: str, checkpointing: bool) -> str:
    """The groups traced bands are kept by: the method, and whether activations are checkpointed."""
    return f"{method}{' +ckpt' if checkpointing else ''}"


def _read(path: str) -> Mapping[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("kinds", {})
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=1)
def _history() -> Mapping[str, Any]:
    return _read(HISTORY_FILE)


@lru_cache(maxsize=1)
def _published() -> Mapping[str, Any]:
    return _read(PUBLISHED_FILE)


def _traced(method: str, checkpointing: bool) -> Uncertainty | None:
    kinds = _history()
    for k in (setup_kind(method, checkpointing), method, "all"):
        h = kinds.get(k)
        if h and h.get("runs"):
            return Uncertainty(max(float(h["max_percent"]), MIN_PERCENT), int(h["runs"]), k)
    return None


@lru_cache(maxsize=256)
def band(method: str, checkpointing: bool, sharded: bool = False) -> Uncertainty | None:
    """The published band of this kind when GPU runs of it are published; else the traced CPU steps' band
    (its own kind, the method's, all runs), marked as CPU traces only; None without any history."""
    kind = f"{method}{' +sharded' if sharded else ''}"
    p = _published().get(kind)
    if p and p.get("runs"):
        return Uncertainty(max(float(p["p90_percent"]), MIN_PERCENT), int(p["runs"]), kind, "published")
    return _traced(method, checkpointing)


def bands(est: Estimate) -> dict[str, Uncertainty | None]:
    """Each method's band in this estimate."""
    sharded = est.setup.num_gpus > 1
    return {r.method: band(r.method, est.setup.gradient_checkpointing, sharded) for r in est.results}
