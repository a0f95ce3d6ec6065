"""Run one simulated step and summarise it: live bytes after forward, candidate peaks of each phase.

`simulate` is cached: it depends on the model, the method and the dtypes/kernels of the setup, not on batch
or sequence length, which stay symbols (B, S, T, K, P) until `evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module

from peftcalc.methods.base import Adaptation
from peftcalc.stepsim.engine import Sim, extrapolated_moments
from peftcalc.stepsim.model import Model, StepConfig
from peftcalc.stepsim.poly import Poly, add_into, prune, scale

FAMILY_MODULES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama", "gemma2": "llama", "phi3": "llama",
    "mixtral": "llama", "gpt2": "gpt2", "t5": "t5", "mt5": "t5", "falcon": "falcon", "bloom": "bloom", "opt": "opt", "gpt_neox": "gpt_neox", "bert": "bert", "roberta": "bert",
}


@dataclass(frozen=True)
class SimResult:
    """Bytes above the step's starting point (weights, optimizer states, inputs), as polynomials."""

    after_forward: Poly  # live when forward returns: what autograd saved, and the loss
    forward_peaks: tuple[Poly, ...]  # candidates for the forward's peak (the largest wins at given sizes)
    backward_peaks: tuple[Poly, ...]  # same for backward (gradients of parameters included)
    gradients: Poly  # parameter gradients when backward ends (for checks: memory.py has them exactly)


def replayable(adaptation: Adaptation) -> bool:
    """The hand-written replay covers this model family and this method: a family of FAMILY_MODULES with its
    hand-written inventory, and one of peftcalc's own methods (one derived from peft, such as LoHa or VeRA,
    changes the computation in ways the replay does not know)."""
    return (adaptation.spec.arch.family in FAMILY_MODULES and getattr(adaptation.spec, "derivation", None) is None
            and getattr(adaptation, "peft_type", None) is None)


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
            if p.tag is not None and p.tag[1] == "mid":
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
