"""Run one simulated step and summarise it: live bytes after forward, candidate peaks of each phase, and the
same candidates tagged with where in the step they happen (`Moment`), for what lives beside the activations only
at some moments (FSDP's gathered blocks and unreduced gradients: estimate.fsdp_phase_peaks).

`simulate` is cached: it depends on the model, the method and the dtypes/kernels of the setup, not on batch
or sequence length, which stay symbols (B, S, T, K, P) until `evaluate`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module

from peftcalc.methods.base import Adaptation
from peftcalc.stepsim.engine import Event, Sim, Stack, extrapolated_moments
from peftcalc.stepsim.model import Model
from peftcalc.stepsim.poly import Poly, add_into, prune, scale
from peftcalc.stepsim.result import FAMILY_MODULES, Moment, SimResult, StepConfig, Where, replayable  # noqa: F401 (re-exported)


def family_module(family: str):
    try:
        return import_module(f"peftcalc.stepsim.families.{FAMILY_MODULES[family]}")
    except KeyError:
        raise NotImplementedError(f"no step simulation for family {family!r}") from None


@lru_cache(maxsize=1024)
def simulate(adaptation: Adaptation, cfg: StepConfig) -> SimResult:
    sim = Sim()
    m = Model(sim, adaptation, cfg)
    loss = family_module(adaptation.spec.arch.family).forward(m)
    m.end_forward()
    after = dict(sim.live)
    sim.start_backward()
    if loss.node is not None:  # (nothing trains: no backward, as torch would refuse)
        sim.op = "ones_like"
        seed = sim.new((), "fp32")
        sim.backward([(loss.node, loss.out_index, seed)])
        del seed
    sim.end_backward()
    grads: Poly = {}
    grads_mid: dict[str, Poly] = {name: {} for name in sim.stacks}
    for p in sim.params:
        if p.grad is not None and not p.capture:
            add_into(grads, p.grad.storage.size if p.grad.storage else {})
            if p.tag is not None and p.tag[1] == "mid" and p.grad.storage:
                add_into(grads_mid[p.tag[0]], p.grad.storage.size)
    extra = {name: max(0, st.count - 3) for name, st in sim.stacks.items()}
    held = {name: st.held for name, st in sim.stacks.items()}
    names = list(sim.stacks)
    fwd, bwd = extrapolated_moments(sim)
    after_all = dict(after)
    for name in names:
        add_into(after_all, scale(held[name].get(2, {}), extra[name]))
    for name in names:
        add_into(grads, scale(grads_mid[name], extra[name]))
    return SimResult(after_all, tuple(prune(fwd)), tuple(prune(bwd) or [after_all]), grads,
                     tagged_moments(sim), tuple(st.count for st in sim.stacks.values()))


# ---- tagged moments --------------------------------------------------------------------------------------------
# Each recorded event, with the unsimulated middle layers added. Outside the simulated middle layer each of the
# `count - 3` others is in the state the simulated one is in (as `simulate` extrapolates). Inside it the others are
# split: in forward, layers below have run and layers above not yet; in backward, layers above are done and layers
# below still hold their saved tensors. Live bytes are linear in how many are on each side, so the extremes are at
# the two ends (all others on one side, or all on the other): each such event gives both.

def tagged_moments(sim: Sim) -> tuple[Moment, ...]:
    stacks = list(sim.stacks.values())
    extra = [max(0, st.count - 3) for st in stacks]
    groups: dict[Where, list[Poly]] = {}
    for e in sim.events + sim.marks:
        base: Poly = dict(e.live)
        inside = next((k for k, st in enumerate(stacks) if e.tag == (st.name, "mid")), None)
        for k, (st, state) in enumerate(zip(stacks, e.states)):
            if k != inside and extra[k] and state:
                add_into(base, scale(st.held.get(state, {}), extra[k]))
        if inside is None or not extra[inside]:
            groups.setdefault(_where(e, stacks, None), []).append(base)
            continue
        for end in ((0, 1) if e.phase == "forward" else (2, 3)):  # (not run, run) / (still holding, done)
            p = dict(base)
            add_into(p, scale(stacks[inside].held.get(end, {}), extra[inside]))
            groups.setdefault(_where(e, stacks, end), []).append(p)
    return tuple(Moment(w, p) for w, ps in groups.items() for p in prune(ps))


def _where(e: Event, stacks: list[Stack], end: int | None) -> Where:
    block = next((k for k, st in enumerate(stacks) if e.tag is not None and e.tag[0] == st.name), None)
    first = e.tag is not None and e.tag[1] == "first"
    if e.phase == "forward":
        return Where("forward", block, first, before=block is None and e.entered == 0, entering=e.op == "enter")
    return Where("backward", block, first, done=tuple(_done(st, e.outer_seq, end if k == block else None)
                                                     for k, st in enumerate(stacks)))


def _done(st: Stack, seq: int | None, end: int | None) -> int:
    """Blocks of `st` whose backward has finished while the outer node `seq` runs (None: backward's first node).
    Nodes run in decreasing creation order, so a layer is done once a node created before it runs."""
    if seq is None:
        return 0
    starts = [s for s in (st.first_start, st.mid_start, st.top_start) if s is not None]
    if not starts or seq >= starts[-1]:
        return 0  # in the last layer, or before any layer's backward (the loss)
    if st.first_start is not None and seq < st.first_start:
        return st.count  # below the stack: all done
    if st.mid_start is not None and seq >= st.mid_start:  # in the middle layer: the other middle ones held or done
        return st.count - 2 if end == 3 else 1
    return st.count - 1  # in the first layer
