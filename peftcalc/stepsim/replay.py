"""Run one simulated step and summarise it: live bytes after forward, candidate peaks of each phase.

`simulate` is cached: it depends on the model, the method and the dtypes/kernels of the setup, not on batch
or sequence length, which stay symbols (B, S, T, K, P) until `evaluate`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module

from peftcalc.methods.base import Adaptation
from peftcalc.stepsim.engine import Sim, extrapolated_moments
from peftcalc.stepsim.model import Model
from peftcalc.stepsim.poly import Poly, add_into, prune, scale
from peftcalc.stepsim.result import FAMILY_MODULES, SimResult, StepConfig, replayable  # noqa: F401 (re-exported)

def replayable(adaptation: Adaptation) -> bool:
    """The hand-written replay covers this model family and this method (a method derived from peft, such as
    LoHa or VeRA, changes the computation in ways the replay does not know)."""
    return adaptation.spec.arch.family in FAMILY_MODULES and adaptation.spec.derivation is None \
        and adaptation.peft_type is None


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
    return SimResult(after_all, tuple(prune(fwd)), tuple(prune(bwd) or [after_all]), grads)
