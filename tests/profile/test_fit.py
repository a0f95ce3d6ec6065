"""peftcalc.profile.fit: exact polynomials from a 2 x 3 (or 1 x 3) grid of sizes."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from peftcalc.profile.fit import MONOMIALS, fit
from peftcalc.stepsim.poly import evaluate

BATCHES, SEQS = (2, 3), (128, 192, 256)


def grid(p, batches=BATCHES, seqs=SEQS):
    return [[evaluate(p, {"B": b, "S": s}) for s in seqs] for b in batches]


@given(st.lists(st.integers(-10**9, 10**12), min_size=6, max_size=6))
def test_recovers_every_polynomial_of_the_form(coefs):
    p = {m: c for m, c in zip(MONOMIALS, coefs) if c}
    assert fit(BATCHES, SEQS, grid(p)) == p


def test_a_count_per_chunk_has_a_rational_coefficient_exact_in_its_residue_class():
    """A (B, S / 64, 7) fp32 tensor per layer: 7 * 4 / 64 bytes per token, whole for S a multiple of 64."""
    values = [[b * (s // 64) * 7 * 4 for s in SEQS] for b in BATCHES]
    p = fit(BATCHES, SEQS, values)
    assert p == {("B", "S"): Fraction(7, 16)}
    assert evaluate(p, {"B": 5, "S": 4096}) == 5 * 64 * 28


def test_batch_one_grid_gives_a_polynomial_in_s():
    p = {(): 12, ("S",): 4096, ("S", "S"): 2}
    values = [[evaluate(p, {"S": s}) for s in SEQS]]
    assert fit((1,), SEQS, values) == p


def test_bad_grids_are_refused():
    with pytest.raises(ValueError):
        fit((2, 3), (1, 2), [[1, 2], [3, 4]])
