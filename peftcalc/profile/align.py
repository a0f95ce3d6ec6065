"""Lining up traced steps of several sizes moment by moment, fitting them, and checking a fit against another step.

Steps traced at different batches and sequence lengths run the same operators in the same order, so their
moments correspond one to one, and each moment's bytes are fitted as a polynomial (profile/fit.py). The exception
is a loop whose length depends on the sequence (chunked linear attention: the gated delta rule, Mamba2's scan):
there the runs of the layer that loops differ in length. Such a run lines up by its common first and last
moments, and what lies between (the loop) stands as its highest moment, or is left out when another moment of
the run is higher at every traced size (checked again on every step compared with the fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from peftcalc.profile.fit import FitError, fit
from peftcalc.profile.step import Moment, Step, Timeline
from peftcalc.stepsim.poly import evaluate

LOOP_MARGIN = 3  # loop periods kept off the aligned ends of a run with a size-dependent loop
COLLAPSED = "the highest moment of a loop over sequence chunks"


def _signature(moments: Sequence[Any]) -> list[tuple]:
    return [(m.phase, m.layer, m.states, m.op) for m in moments]


def _runs(moments: Sequence[Any]) -> list[list[Any]]:
    """Consecutive moments of one phase and layer."""
    runs: list[list[Any]] = []
    for m in moments:
        if runs and (runs[-1][0].phase, runs[-1][0].layer) == (m.phase, m.layer):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


@dataclass(frozen=True)
class RunShape:
    """How one run of moments (one layer's forward or backward) lines up across sizes: its first `prefix` and last
    `suffix` moments run the same operations at every size; between them, if anything, a loop whose length
    depends on the sequence (chunked linear attention), kept as its highest moment ("max"), or left out when
    another moment of the run is higher at every size ("dominated")."""

    prefix: int
    suffix: int
    middle: str  # "" (nothing between), "max" or "dominated"


def _common(seqs: Sequence[Sequence[tuple]], reverse: bool) -> int:
    n = min(len(x) for x in seqs)
    k = 0
    while k < n and all((x[-1 - k] if reverse else x[k]) == (seqs[0][-1 - k] if reverse else seqs[0][k]) for x in seqs):
        k += 1
    return k


def run_shapes(grid: Sequence[Timeline]) -> list[RunShape]:
    runs = [_runs(t.moments) for t in grid]
    if any([(r[0].phase, r[0].layer, r[0].states) for r in rs] !=
           [(r[0].phase, r[0].layer, r[0].states) for r in runs[0]] for rs in runs[1:]):
        raise FitError("the traced steps at different sizes run their layers differently")
    shapes = []
    for i in range(len(runs[0])):
        sigs = [_signature(rs[i]) for rs in runs]
        if all(x == sigs[0] for x in sigs):
            shapes.append(RunShape(len(sigs[0]), 0, ""))
            continue
        shortest = min(len(x) for x in sigs)
        # The loop's iterations repeat the same operations, so the common prefix and suffix reach into it; its
        # first and last iterations differ with the number of chunks, so they are kept off the aligned ends
        # (a few loop periods: the gcd of how much longer the runs of longer sequences are).
        period = math.gcd(*[len(x) - shortest for x in sigs])
        p = max(0, min(_common(sigs, False), shortest - 1) - LOOP_MARGIN * period)
        q = max(0, min(_common(sigs, True), shortest - 1 - p) - LOOP_MARGIN * period)
        outer = [max([m.live for m in rs[i][:p] + rs[i][len(rs[i]) - q:]], default=0) for rs in runs]
        inner = [max(m.live for m in rs[i][p:len(rs[i]) - q]) for rs in runs]
        shapes.append(RunShape(p, q, "dominated" if all(x < y for x, y in zip(inner, outer)) else "max"))
    return shapes


def align(tl: Timeline, shapes: Sequence[RunShape]) -> list[tuple[Any, int]] | None:
    """The timeline's moments as `shapes` line them up, as (moment, live); None if it does not fit them."""
    runs = _runs(tl.moments)
    if len(runs) != len(shapes):
        return None
    out: list[tuple[Any, int]] = []
    for run, sh in zip(runs, shapes):
        if not sh.middle:
            out.extend((m, m.live) for m in run)
            continue
        head, mid, tail = run[:sh.prefix], run[sh.prefix:len(run) - sh.suffix], run[len(run) - sh.suffix:]
        if not mid:
            return None
        out.extend((m, m.live) for m in head)
        top = max(mid, key=lambda m: m.live)
        if sh.middle == "max":
            out.append((replace(top, op=COLLAPSED), top.live))
        elif top.live >= max([m.live for m in head + tail], default=0):
            return None
        out.extend((m, m.live) for m in tail)
    return out


def fit_step(grid: Sequence[Timeline], batches: Sequence[int], seqs: Sequence[int]
             ) -> tuple[Step, list[RunShape]]:
    """The step as polynomials, from timelines at batches x seqs (row-major), and how its runs line up."""
    shapes = run_shapes(grid)
    moments = [align(t, shapes) for t in grid]
    if any(m is None or _signature([x for x, _ in m]) != _signature([x for x, _ in moments[0]]) for m in moments):
        raise FitError("the traced steps at different sizes do not line up operation by operation")
    rows = len(batches)

    def poly(vals: Sequence[int], what: str):
        return fit(batches, seqs, [vals[i * 3:(i + 1) * 3] for i in range(rows)], what)

    fitted = tuple(Moment(m.phase, m.layer, m.states, poly([ms[i][1] for ms in moments], m.op), m.op)
                   for i, (m, _) in enumerate(moments[0]))
    count = len(grid[0].layer_gradients)
    held = {s: [poly([t.held[s][k] for t in grid], f"held {s}") for k in range(count)] for s in grid[0].held}
    step = Step(fitted, held, poly([t.after_forward for t in grid], "after forward"),
                poly([t.gradients for t in grid], "gradients"),
                tuple(poly([t.layer_gradients[k] for t in grid], "layer gradients") for k in range(count)))
    return step, shapes


def agrees(step: Step, shapes: Sequence[RunShape], tl: Timeline, batch: int, seq: int) -> bool:
    """The fitted step predicts this traced one exactly, moment by moment as `shapes` line them up."""
    v = {"B": batch, "S": seq}
    mine = align(tl, shapes)
    if mine is None or _signature([m for m, _ in mine]) != _signature(step.moments):
        return False
    return (all(evaluate(a.live, v) == live for a, (_, live) in zip(step.moments, mine))
            and evaluate(step.after_forward, v) == tl.after_forward
            and all(evaluate(p, v) == x for s in step.held for p, x in zip(step.held[s], tl.held[s])))
