"""Which sizes a profile traces for a batch and sequence length, so that every traced step takes the code path the
real one takes.

Code paths change with the sizes in a few known ways: a batch of one lets ATen view what a larger batch copies;
a sequence longer than a sliding window (or an attention chunk) builds a mask a shorter one does not need; a
chunked kernel pads the sequence to a multiple of its chunk. So a regime is: batch 1 or more; the interval
between two consecutive length thresholds of the config (its `*window*` and `*chunk*` sizes) that holds S; and
S modulo the padding period (64, the gated delta rule's chunk, and the config's chunk sizes). The fit grid lies inside
the regime (batches 2 and 3, three lengths 64 apart, congruent to S), and two more steps check it: one more
length in the same residue class (the polynomial form), and one at batch 1 and one at another residue, which,
when they agree too, widen the regime to every batch and every residue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from peftcalc.profile.store import Regime

MODULUS = 64  # chunked kernels transformers runs in torch pad to 64 (gated delta rule) or their config's chunk
MIN_SEQ = 128  # the shortest traced sequence: one chunk of a chunked kernel is a special case (no state carried)


@dataclass(frozen=True)
class Plan:
    regime: Regime  # what the fit grid stands for, before the widening checks
    batches: tuple[int, ...]
    seqs: tuple[int, int, int]
    check: tuple[int, int]  # (batch, seq) in the regime, not on the grid
    widen_batch: tuple[int, int] | None  # a batch-1 step in the same length range (for a 2+ regime)
    widen_residue: tuple[int, int] | None  # a step at another residue


def _lengths(cfg: Mapping[str, Any], word: str) -> set[int]:
    return {v for k, v in cfg.items() if isinstance(v, int) and not isinstance(v, bool) and v > 1 and word in k
            and "layer" not in k}  # (max_window_layers counts layers)


def thresholds(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """Sequence lengths at which a config's code path may change: its window and chunk sizes."""
    return tuple(sorted(_lengths(cfg, "window") | _lengths(cfg, "chunk")))


def modulus(cfg: Mapping[str, Any]) -> int:
    """The period of padding to chunks: 64 and every chunk size of the config."""
    return math.lcm(MODULUS, *_lengths(cfg, "chunk"))


def plan(cfg: Mapping[str, Any], batch: int, seq: int) -> Plan:
    """The traced sizes for a step of `batch` x `seq` tokens of this config."""
    ts, mod = thresholds(cfg), modulus(cfg)
    lo = max((t for t in ts if t < seq), default=0)
    hi = min((t for t in ts if t >= seq), default=None)
    batches = (1,) if batch == 1 else (2, 3)
    widen_batch = None if batch == 1 else (1, 0)
    kind = "1" if batch == 1 else "2+"
    if hi is not None and hi - lo < 5 * mod:  # a narrow range (a short sliding window): no residue classes
        step = max(1, (hi - lo) // 5)
        seqs = (lo + step, lo + 2 * step, lo + 3 * step)
        return Plan(Regime(kind, lo, hi, None, mod), batches, seqs, (batches[-1], lo + 4 * step),
                    widen_batch and (1, seqs[1]), None)
    residue = seq % mod
    first = max(lo + 1, MIN_SEQ)
    first += (residue - first) % mod
    seqs = (first, first + mod, first + 2 * mod)
    return Plan(Regime(kind, lo, hi, residue, mod), batches, seqs, (batches[-1], first + 3 * mod),
                widen_batch and (1, seqs[1]), (batches[-1], first + 2 * mod + 8))
