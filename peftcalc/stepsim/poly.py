"""Byte counts as polynomials in the step's free sizes: batch B, tokens T, keys K, prefix P, encoder tokens E.

A polynomial is a dict from a monomial (a sorted tuple of symbol names, `()` for the constant) to an
integer coefficient. Sizes in the step are products of dimensions, so every live-byte count is one.
"""

from __future__ import annotations

from typing import Mapping, Union

Poly = dict[tuple[str, ...], int]
Dim = Union[int, str]


def numel(shape: tuple[Dim, ...]) -> Poly:
    """Elements of a tensor of `shape` (ints and symbol names)."""
    coef, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            coef *= d
        else:
            syms.append(d)
    return {tuple(sorted(syms)): coef} if coef else {}


def scale(p: Poly, k: int) -> Poly:
    return {m: c * k for m, c in p.items()} if k else {}


def add_into(acc: Poly, p: Poly, sign: int = 1) -> None:
    for m, c in p.items():
        v = acc.get(m, 0) + sign * c
        if v:
            acc[m] = v
        else:
            acc.pop(m, None)


def plus(*ps: Poly) -> Poly:
    out: Poly = {}
    for p in ps:
        add_into(out, p)
    return out


def dominated(a: Poly, b: Poly) -> bool:
    """True when a <= b for every positive value of the symbols (coefficient-wise)."""
    return all(c <= b.get(m, 0) for m, c in a.items()) and all(c >= 0 for m, c in b.items() if m not in a)


def prune(polys: list[Poly]) -> list[Poly]:
    """Drop every polynomial that another one bounds from above for all sizes."""
    keep: list[Poly] = []
    for p in sorted(polys, key=lambda q: -sum(q.values())):
        if not any(dominated(p, k) for k in keep):
            keep = [k for k in keep if not dominated(k, p)]
            keep.append(p)
    return keep


def evaluate(p: Poly, values: Mapping[str, int]) -> int:
    total = 0
    for m, c in p.items():
        v = c
        for s in m:
            v *= values[s]
        total += v
    return total
