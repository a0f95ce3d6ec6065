"""peftcalc.stepsim.poly: byte counts as polynomials in the step's sizes.

Every property is checked by evaluation: a polynomial is what it evaluates to at positive sizes, so the
expected value of each operation is the arithmetic on the evaluated numbers, never the code's own output.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from peftcalc.stepsim.poly import add_into, dominated, evaluate, numel, plus, prune, scale

SYMBOLS = ("B", "S", "T", "K", "P", "E")

monomials = st.lists(st.sampled_from(SYMBOLS), max_size=3).map(lambda s: tuple(sorted(s)))
coefficients = st.integers(-1000, 1000).filter(bool)
polys = st.dictionaries(monomials, coefficients, max_size=5)
nonneg_polys = st.dictionaries(monomials, st.integers(1, 1000), max_size=5)
sizes = st.fixed_dictionaries({s: st.integers(1, 5000) for s in SYMBOLS})
dims = st.one_of(st.integers(0, 64), st.sampled_from(SYMBOLS))
shapes = st.lists(dims, max_size=5).map(tuple)

FAST = settings(max_examples=200, deadline=None)


def by_hand(p: dict, v: dict) -> int:
    """The value of `p` at `v`, computed independently of poly.evaluate."""
    return sum(c * math.prod(v[s] for s in m) for m, c in p.items())


# -- evaluate ---------------------------------------------------------------------------------------------


def test_evaluate_examples():
    v = {"B": 3, "S": 7, "T": 11}
    assert evaluate({}, v) == 0
    assert evaluate({(): 5}, v) == 5
    assert evaluate({("B",): 2}, v) == 6
    assert evaluate({("B", "B", "S"): 4, ("T",): -1, (): 9}, v) == 4 * 3 * 3 * 7 - 11 + 9
    # a symbol the polynomial does not use need not have a value
    assert evaluate({("B",): 1}, {"B": 2}) == 2


@FAST
@given(polys, sizes)
def test_evaluate_matches_hand_arithmetic(p, v):
    assert evaluate(p, v) == by_hand(p, v)


# -- numel --------------------------------------------------------------------------------------------------


def test_numel_examples():
    assert numel(()) == {(): 1}  # a scalar has one element
    assert numel((2, 3, 4)) == {(): 24}
    assert numel(("B", "T", 8)) == {("B", "T"): 8}
    assert numel(("T", 2, "B")) == {("B", "T"): 2}  # symbols sorted: one key per monomial
    assert numel(("B", "B")) == {("B", "B"): 1}
    assert numel(("B", 0, 7)) == {}  # an empty tensor has no bytes


@FAST
@given(shapes, sizes)
def test_numel_is_the_product_of_the_evaluated_dims(shape, v):
    expected = math.prod(v[d] if isinstance(d, str) else d for d in shape)
    assert evaluate(numel(shape), v) == expected


@FAST
@given(shapes, shapes)
def test_numel_does_not_depend_on_dimension_order(a, b):
    assert numel(a + b) == numel(b + a)


# -- scale, plus, add_into ---------------------------------------------------------------------------------


@FAST
@given(polys, st.integers(-20, 20), sizes)
def test_scale_multiplies_the_value(p, k, v):
    assert evaluate(scale(p, k), v) == k * by_hand(p, v)


def test_scale_by_zero_is_empty_and_keeps_no_zero_coefficients():
    assert scale({("B",): 3, (): 2}, 0) == {}
    assert scale({("B",): 3}, 2) == {("B",): 6}


@FAST
@given(polys, polys, sizes)
def test_plus_adds_the_values(a, b, v):
    assert evaluate(plus(a, b), v) == by_hand(a, v) + by_hand(b, v)


@FAST
@given(st.lists(polys, max_size=6), sizes)
def test_plus_of_many_adds_all_values(ps, v):
    assert evaluate(plus(*ps), v) == sum(by_hand(p, v) for p in ps)


@FAST
@given(polys, polys)
def test_plus_does_not_modify_its_arguments_and_stores_no_zero(a, b):
    a0, b0 = dict(a), dict(b)
    out = plus(a, b)
    assert a == a0 and b == b0
    assert all(c != 0 for c in out.values())


@FAST
@given(polys, polys, sizes)
def test_add_into_accumulates_in_place(acc, p, v):
    before = by_hand(acc, v)
    add_into(acc, p)
    assert evaluate(acc, v) == before + by_hand(p, v)
    add_into(acc, p, -1)
    assert evaluate(acc, v) == before


@FAST
@given(polys)
def test_add_into_with_sign_minus_one_cancels_to_empty(p):
    acc = dict(p)
    add_into(acc, p, -1)
    assert acc == {}  # no monomial is left behind with a zero coefficient


def test_add_into_removes_monomials_that_cancel():
    acc = {("B",): 4, (): 1}
    add_into(acc, {("B",): -4})
    assert acc == {(): 1}


# -- dominated, prune: never drop what is larger somewhere ---------------------------------------------------


def test_dominated_examples():
    assert dominated({("B",): 2}, {("B",): 3})
    assert dominated({("B",): 2}, {("B",): 2, ("S",): 1})  # b adds a positive term
    assert not dominated({("B",): 2}, {("B",): 2, ("S",): -1})  # b subtracts: smaller for large S
    assert not dominated({("B",): 3}, {("B",): 2})
    assert not dominated({("B",): 1}, {("S",): 100})  # larger when B >> S
    assert dominated({("B",): -5}, {})  # negative everywhere is below zero
    assert not dominated({(): 1}, {})
    assert dominated({}, {})


@settings(max_examples=400, deadline=None)
@given(polys, polys, st.lists(sizes, min_size=1, max_size=8))
def test_dominated_is_sound_at_positive_sizes(a, b, points):
    """If `a` is declared bounded by `b`, no positive sizes make `a` larger."""
    if dominated(a, b):
        for v in points:
            assert by_hand(a, v) <= by_hand(b, v)


perturbations = st.dictionaries(monomials, st.integers(-3, 3).filter(bool), max_size=3)


@settings(max_examples=400, deadline=None)
@given(polys, perturbations, st.lists(sizes, min_size=1, max_size=8))
def test_dominated_is_sound_for_nearby_polynomials(a, q, points):
    """b = a + a small perturbation, so that dominated(a, b) is often true, and must then hold at every size.
    The rule is the coefficient-wise comparison (poly.dominated's docstring): a perturbation with a negative
    coefficient makes it false (3B - 1 > 0 for every positive B, but that needs more than coefficients)."""
    b = plus(a, q)
    if any(c < 0 for c in q.values()):
        assert not dominated(a, b)
    else:
        assert dominated(a, b)
    if dominated(a, b):
        for v in points:
            assert by_hand(a, v) <= by_hand(b, v)


@FAST
@given(polys)
def test_a_polynomial_is_dominated_by_itself(p):
    assert dominated(p, p)


@FAST
@given(polys, nonneg_polys)
def test_adding_positive_terms_dominates(p, q):
    assert dominated(p, plus(p, q))


@settings(max_examples=400, deadline=None)
@given(st.lists(polys, max_size=8), st.lists(sizes, min_size=1, max_size=8))
def test_prune_keeps_the_maximum_at_every_size(ps, points):
    """The kept candidates reach the same maximum as all of them, wherever evaluated."""
    kept = prune(ps)
    assert all(k in ps for k in kept)
    if not ps:
        assert kept == []
        return
    assert kept
    for v in points:
        assert max(by_hand(k, v) for k in kept) == max(by_hand(p, v) for p in ps)


@settings(max_examples=300, deadline=None)
@given(st.lists(polys, max_size=8), st.lists(sizes, min_size=1, max_size=6))
def test_prune_drops_only_polynomials_some_kept_one_bounds_everywhere(ps, points):
    kept = prune(ps)
    for p in ps:
        if p in kept:
            continue
        # some kept polynomial is at least as large at every sampled point
        assert any(all(by_hand(k, v) >= by_hand(p, v) for v in points) for k in kept)


def test_prune_keeps_crossing_candidates():
    """B*S*100 (activations) and 10000 (a weight gradient) cross: each wins for some sizes; both stay.
    B*S*100 + 1 bounds B*S*100, so that one goes."""
    act, grad, bigger = {("B", "S"): 100}, {(): 10000}, {("B", "S"): 100, (): 1}
    kept = prune([act, grad, bigger])
    assert grad in kept and bigger in kept and act not in kept
    assert len(kept) == 2


def test_prune_keeps_one_of_equal_candidates():
    p = {("B",): 3, (): 1}
    assert prune([dict(p), dict(p), {("B",): 1}]) == [p]
