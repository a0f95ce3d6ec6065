"""Profiles as plain JSON: shipped with the package for catalogue models, cached in the user's cache folder for the
rest. No torch here: reading a profile is what a click-only install does.

A profile file holds every profile traced for one key (model config, method and its options, the setup flags
that change what the step allocates, the torch/transformers/peft versions), one per size regime (`Regime`: batch
of one or more, the range of sequence lengths between two thresholds such as a sliding window, and, for models
that pad to a chunk size, the sequence length modulo that size). Files are written atomically; a file that cannot be
read (truncated, edited, another format) is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from peftcalc.atomic import write_text_atomic
from peftcalc.errors import PeftcalcError
from peftcalc.stepsim.poly import Poly
from peftcalc.usercache import cache_root

PROFILE_FORMAT = 1
SHIPPED_DIR = Path(__file__).with_name("shipped")
Batch = Literal["1", "2+", "any"]


@dataclass(frozen=True)
class Regime:
    """The sizes a profile is exact for: batch (1, 2 or more, any), lo < S <= hi, and S % modulus == residue
    (None: any S; chunked kernels pad the sequence to a multiple of their chunk, which divides the modulus)."""

    batch: Batch
    seq_lo: int
    seq_hi: int | None
    residue: int | None
    modulus: int = 64

    def covers(self, batch: int, seq: int) -> bool:
        if self.batch != "any" and (batch == 1) != (self.batch == "1"):
            return False
        if seq <= self.seq_lo or (self.seq_hi is not None and seq > self.seq_hi):
            return False
        return self.residue is None or seq % self.modulus == self.residue

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "seq_lo": self.seq_lo, "seq_hi": self.seq_hi, "residue": self.residue,
                "modulus": self.modulus}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Regime":
        return cls(str(d["batch"]), int(d["seq_lo"]), d["seq_hi"], d["residue"], int(d["modulus"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Profile:
    """The step's activations for one model, method and setup, in one size regime: polynomials in B and S
    (bytes above the step's start, as stepsim's SimResult)."""

    regime: Regime
    after_forward: Poly
    forward_peaks: tuple[Poly, ...]
    backward_peaks: tuple[Poly, ...]
    gradients: Poly
    source: str  # how it was traced: layers, sizes, library versions

    def to_dict(self) -> dict[str, Any]:
        return {"regime": self.regime.to_dict(), "after_forward": poly_to_json(self.after_forward),
                "forward_peaks": [poly_to_json(p) for p in self.forward_peaks],
                "backward_peaks": [poly_to_json(p) for p in self.backward_peaks],
                "gradients": poly_to_json(self.gradients), "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
        return cls(Regime.from_dict(d["regime"]), poly_from_json(d["after_forward"]),
                   tuple(poly_from_json(p) for p in d["forward_peaks"]),
                   tuple(poly_from_json(p) for p in d["backward_peaks"]), poly_from_json(d["gradients"]),
                   str(d["source"]))


def poly_to_json(p: Poly) -> dict[str, int | str]:
    """{("B", "S"): 3, (): 5, ("S",): Fraction(1, 64)} -> {"B*S": 3, "1": 5, "S": "1/64"}."""
    return {"*".join(m) or "1": (c if isinstance(c, int) else str(c)) for m, c in sorted(p.items())}


def poly_from_json(d: Mapping[str, int | str]) -> Poly:
    return {(() if k == "1" else tuple(k.split("*"))): (c if isinstance(c, int) else _number(c)) for k, c in d.items()}


def _number(text: str) -> int | Fraction:
    f = Fraction(text)
    return int(f) if f.denominator == 1 else f


def profile_key(parts: Mapping[str, Any]) -> str:
    """A file name for a profile's key: the sha256 of its canonical JSON."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def cache_dir() -> Path:
    """The profiles in peftcalc's folder of the user's cache (usercache.py)."""
    return Path(cache_root()) / "profiles"


def read_profiles(path: Path, key: str) -> list[Profile]:
    """The profiles of a file, or none if it is missing, unreadable or of another key or format."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != PROFILE_FORMAT or data.get("key") != key:
            return []
        return [Profile.from_dict(p) for p in data["profiles"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def write_profiles(path: Path, key: str, parts: Mapping[str, Any], profiles: list[Profile]) -> None:
    data = {"format": PROFILE_FORMAT, "key": key, "parts": dict(parts), "profiles": [p.to_dict() for p in profiles]}
    try:
        write_text_atomic(path, json.dumps(data, sort_keys=True, indent=1, default=str) + "\n")
    except PeftcalcError:
        pass  # an unwritable cache only costs the next estimate a trace


def find(profiles: list[Profile], batch: int, seq: int) -> Profile | None:
    return next((p for p in profiles if p.regime.covers(batch, seq)), None)
