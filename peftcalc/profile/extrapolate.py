"""From the traced model's step to the real model's: every moment of the step, extrapolated over the real layers.

The input is a traced step with every byte count already a polynomial in B and S (`Step`: the moments, what each
traced layer held in each state, the live bytes after forward, the gradients). The rule is stepsim's
(peftcalc/stepsim/engine.py `extrapolated_moments`), with layers of several types:

- at a moment outside the middle layers, each real middle layer is in the state the traced middle layers are in
  (not run, done with forward, holding its saved tensors in backward, done with backward) and holds what the
  traced layer of its type holds then;
- at a moment inside a traced middle layer of some type, it stands for the first and for the last real middle
  layer of that type: the real layers below it are done with forward (in backward: still hold their saved
  tensors), those above have not run (in backward: are done). Live bytes are linear in how many are on each
  side, so these two ends bound every other position;
- what lies outside the layers but grows with their number (prefix tuning's prompt encoder output) is the
  difference between the two traced layouts, per added middle layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from peftcalc.profile.layout import Layout, representative
from peftcalc.profile.step import Moment, Step
from peftcalc.stepsim.poly import Poly, add_into, plus, prune, scale


@dataclass(frozen=True)
class Extrapolated:
    after_forward: Poly
    forward_peaks: tuple[Poly, ...]
    backward_peaks: tuple[Poly, ...]
    gradients: Poly


class AlignError(ValueError):
    """The two traced layouts' steps do not correspond moment by moment."""


def _held(step: Step, state: int, k: int) -> Poly:
    return step.held.get(state, [{}] * len(step.layer_gradients))[k] if state > 0 else {}


def _states_around(layer: int, count: int, phase: str) -> list[int]:
    """The states of the other layers while middle layer `layer` runs."""
    below, above = (1, 0) if phase == "forward" else (2, 3)
    return [below if k < layer else above if k > layer else 0 for k in range(count)]


def _own(step: Step, m: Moment, count: int) -> Poly:
    """The moment's live bytes less what the traced middle layers other than the running one hold."""
    states = _states_around(m.layer, count, m.phase) if _middle(m.layer, count) else list(m.states)
    out = dict(m.live)
    for k in range(1, count - 1):
        if k != m.layer:
            add_into(out, _held(step, states[k], k), -1)
    return out


def _middle(layer: int | None, count: int) -> bool:
    return layer is not None and 0 < layer < count - 1


def _runs(moments: Sequence[Moment], key) -> list[list[Moment]]:
    runs: list[list[Moment]] = []
    for m in moments:
        if runs and key(runs[-1][0]) == key(m):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _match_run(a: list[Moment], b: list[Moment]) -> list[Moment]:
    """b's moments matching a's, where b repeats some of a's per-layer operations once more (prefix tuning
    builds and reduces one key/value cache per layer outside the layers): one inserted block, matched as late
    as possible, so that the last of a repeated operation meets the last of b's."""
    ops_a, ops_b = [m.op for m in a], [m.op for m in b]
    extra = len(b) - len(a)
    if extra < 0:
        raise AlignError("a traced layout has fewer moments than a smaller one")
    q = 0
    while q < len(a) and ops_a[len(a) - 1 - q] == ops_b[len(b) - 1 - q]:
        q += 1
    p = len(a) - q
    if ops_a[:p] != ops_b[:p]:
        raise AlignError("the traced layouts differ by more than one block of repeated operations")
    return b[:p] + b[p + extra:]


def _aligned(a: Step, b: Step, la: Layout, lb: Layout) -> list[Moment]:
    """For each of a's moments, the corresponding moment of b (whose extra middle layer is left out)."""
    if la == lb:
        return list(b.moments)
    extra = next(k for k, r in enumerate(lb.selected) if r not in la.selected)
    kept = [m for m in b.moments if m.layer != extra]

    def key_b(m: Moment) -> tuple:
        return m.phase, None if m.layer is None else m.layer - (m.layer > extra)

    runs_a = _runs(a.moments, lambda m: (m.phase, m.layer))
    runs_b = _runs(kept, key_b)
    if [(r[0].phase, r[0].layer) for r in runs_a] != [key_b(r[0]) for r in runs_b]:
        raise AlignError(f"the traced layouts {la.selected} and {lb.selected} run their layers differently")
    out: list[Moment] = []
    for ra, rb in zip(runs_a, runs_b):
        out.extend(_match_run(ra, rb))
    return out


def extrapolate(a: Step, b: Step, la: Layout, lb: Layout, types: Sequence[Hashable]) -> Extrapolated:
    """The real model's after-forward bytes, candidate peaks and gradients, from the two traced layouts."""
    n, real = la.count, la.real_count
    rep = representative(types, la)
    grow = real - n  # middle layers the real model has beyond layout a
    b_moments = _aligned(a, b, la, lb)
    fwd: list[Poly] = []
    bwd: list[Poly] = []
    for m, mb in zip(a.moments, b_moments):
        own = _own(a, m, n)
        delta = plus(_own(b, mb, lb.count), scale(own, -1)) if la != lb else {}
        add_into(own, scale(delta, grow))
        out = fwd if m.phase == "forward" else bwd
        if _middle(m.layer, n):
            for r in _ends(rep, m.layer, real):
                out.append(plus(own, _real_held(a, rep, m.phase, r)))
        else:
            state = next((s for k, s in enumerate(m.states) if 0 < k < n - 1), 0)
            out.append(plus(own, _real_held(a, rep, m.phase, None, state)))
    after = _outside(a, a.after_forward, 2, n)
    if la != lb:
        add_into(after, scale(plus(_outside(b, b.after_forward, 2, lb.count), scale(after, -1)), grow))
    grads = _outside_grads(a, n)
    if la != lb:
        add_into(grads, scale(plus(_outside_grads(b, lb.count), scale(grads, -1)), grow))
    for r in range(1, real - 1):
        add_into(after, _held(a, 2, rep[r]))
        add_into(grads, a.layer_gradients[rep[r]])
    return Extrapolated(after, tuple(prune(fwd)), tuple(prune(bwd) or [after]), grads)


def _outside(step: Step, live: Poly, state: int, count: int) -> Poly:
    """`live` less what the traced middle layers hold in `state`."""
    out = dict(live)
    for k in range(1, count - 1):
        add_into(out, _held(step, state, k), -1)
    return out


def _outside_grads(step: Step, count: int) -> Poly:
    """Parameter gradients less those of the traced middle layers."""
    out = dict(step.gradients)
    for k in range(1, count - 1):
        add_into(out, step.layer_gradients[k], -1)
    return out


def _ends(rep: list[int], k: int, real: int) -> list[int]:
    """The first and the last real middle layer that traced middle layer k stands for."""
    mine = [r for r in range(1, real - 1) if rep[r] == k]
    return sorted({mine[0], mine[-1]})


def _real_held(step: Step, rep: list[int], phase: str, running: int | None, state: int = 0) -> Poly:
    """What the real middle layers other than `running` hold: in `state`, or by their side of `running`."""
    below, above = (1, 0) if phase == "forward" else (2, 3)
    counts: dict[tuple[int, int], int] = {}
    for r in range(1, len(rep) - 1):
        if r == running:
            continue
        s = state if running is None else below if r < running else above
        if s:
            counts[(s, rep[r])] = counts.get((s, rep[r]), 0) + 1
    out: Poly = {}
    for (s, k), c in counts.items():
        add_into(out, scale(_held(step, s, k), c))
    return out
