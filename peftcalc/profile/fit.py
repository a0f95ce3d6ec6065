"""Exact polynomials in batch B and sequence length S from byte counts traced at a few sizes.

Which monomials, and why: every tensor of a training step has a size that is a product of model constants and
at most one factor of the batch, and of the sequence at most twice (attention scores and their masks, (S, S) or
(B, heads, S, S), under eager or math attention; chunked linear attention's inter-chunk decay matrices). So the
live bytes at any moment of the step, and the bytes any layer holds, are

    c0 + c1 B + c2 S + c3 B S + c4 S^2 + c5 B S^2

with integer coefficients (rational ones for kernels that pad to a chunk: a count per chunk is S / 64 times
a constant, exact for the sequence lengths of one residue class modulo 64): B S covers activations and the loss over the vocabulary (B S vocab), S alone the
position tables and masks built once per sequence, B alone per-sequence scalars (label padding), B S^2 the
attention matrices. Keys and prefix tokens that a method adds shift S by a constant (K = S + P), which stays
inside this form. The fit is exact, over the rationals, from a 2 x 3 grid of sizes (B in {b0, b1}, S in
{s0, s1, s2}): quadratic in S at each B (Lagrange), then linear in B. A size grid at batch 1 gives c0 + c2 S +
c4 S^2 for batch 1 alone (code paths can differ between a batch of one and more). Three points fit any
values: that the counts really have this form is checked on steps traced at other sizes
(peftcalc/measure/profile.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from peftcalc.stepsim.poly import Poly

MONOMIALS: tuple[tuple[str, ...], ...] = ((), ("B",), ("S",), ("B", "S"), ("S", "S"), ("B", "S", "S"))


class FitError(ValueError):
    """The traced counts are not a polynomial of the assumed form in the sampled sizes."""


def _quadratic(xs: Sequence[int], ys: Sequence[int]) -> tuple[Fraction, Fraction, Fraction]:
    """Coefficients (a0, a1, a2) of the parabola through three points, exactly."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d01 = Fraction(y1 - y0, x1 - x0)
    d12 = Fraction(y2 - y1, x2 - x1)
    a2 = (d12 - d01) / (x2 - x0)
    a1 = d01 - a2 * (x0 + x1)
    a0 = y0 - a1 * x0 - a2 * x0 * x0
    return a0, a1, a2


def _coefficient(c: Fraction) -> int | Fraction:
    return int(c) if c.denominator == 1 else c


def fit(batches: Sequence[int], seqs: Sequence[int], values: Sequence[Sequence[int]], what: str = "bytes") -> Poly:
    """The polynomial through `values[i][j]` (bytes at batches[i], seqs[j]). One batch: batch-1 regime
    (no B); two batches: the full form."""
    if len(seqs) != 3 or len(batches) not in (1, 2):
        raise ValueError("fit needs 3 sequence lengths and 1 or 2 batch sizes")
    per_batch = [_quadratic(seqs, row) for row in values]
    out: Poly = {}
    for power, mono in ((0, ()), (1, ("S",)), (2, ("S", "S"))):
        if len(batches) == 1:
            coef = {mono: per_batch[0][power]}
        else:
            (b0, b1), (c0, c1) = batches, (per_batch[0][power], per_batch[1][power])
            slope = (c1 - c0) / (b1 - b0)
            coef = {mono: c0 - slope * b0, tuple(sorted(("B",) + mono)): slope}
        for m, c in coef.items():
            v = _coefficient(c)
            if v:
                out[m] = v
    return out
