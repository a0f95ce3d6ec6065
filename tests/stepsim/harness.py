"""The stepsim side of the operator comparisons: run one stepsim operator (or a short composition of them)
the way `torch_meter.measure` runs the real one, and report the same numbers.

Conventions this follows (engine.py): a weight (`Sim.param`) and a pre-existing input (`Sim.leaf`) have no
storage (model states, counted elsewhere); an activation is a storage made by `Sim.new`; a node keeps the
storages it saved alive; parameter gradients are storages.
"""

from __future__ import annotations

from typing import Callable, Sequence

from peftcalc.stepsim.engine import Sim, Tensor
from peftcalc.stepsim.ops import Ops
from peftcalc.stepsim.poly import evaluate

from .torch_meter import Measured

SIZES = {"B": 2, "S": 5, "T": 5, "K": 5, "P": 3}


def live(sim: Sim, values=SIZES) -> int:
    return evaluate(sim.live, values)


def peak_since(sim: Sim, mark: int, values=SIZES) -> int:
    """Highest live bytes among the events recorded from index `mark` on, and now."""
    sim.flush()
    return max([evaluate(e.live, values) for e in sim.events[mark:]] + [live(sim, values)])


def activation(sim: Sim, shape, dtype: str, requires_grad: bool = True) -> Tensor:
    """A tensor made in the step (its storage counted) that requires grad as a leaf: its gradient is handed
    to a `Sim.capture` parameter, as `torch.autograd.grad` hands one back."""
    t = sim.new(shape, dtype)
    if not requires_grad:
        return t
    return Tensor(shape, dtype, t.storage, None, 0, True, sim.capture(shape, dtype))


def saved_storages(sim: Sim) -> dict[int, object]:
    """The distinct storages the live nodes keep."""
    out = {}
    for ref in sim.nodes:
        n = ref()
        if n is not None:
            for s in n.saved:
                out[id(s)] = s
    return out


def predict(make_inputs: Callable[[Sim], Sequence[Tensor]], forward: Callable[..., Tensor],
            make_params: Callable[[Sim], Sequence[Tensor]] = lambda sim: (), autocast: str | None = None,
            backward: bool = True, values=SIZES) -> Measured:
    """stepsim's `Measured` for `forward(ops, *inputs, *params)`: the same fields, the same meaning."""

    def run(keep_output: bool):
        sim = Sim()
        ops = Ops(sim)
        ops.autocast = autocast
        params = list(make_params(sim))
        xs = list(make_inputs(sim))
        sim.flush()
        base, mark = live(sim, values), len(sim.events)
        out = forward(ops, *xs, *params)
        ops.autocast_cache.clear()  # autocast exits with the forward
        forward_peak = peak_since(sim, mark, values) - base
        after = live(sim, values) - base
        inputs = {id(x.storage) for x in xs}
        saved = saved_storages(sim)
        saved_inputs = sum(evaluate(s.size, values) for k, s in saved.items() if k in inputs)
        saved_new = sum(evaluate(s.size, values) for k, s in saved.items() if k not in inputs)
        del saved
        if not keep_output:
            node = out.node
            del out
            graph_only = live(sim, values) - base
            del node
            return graph_only
        if not backward:
            return Measured(forward_peak, after, saved_new, saved_inputs, 0, 0, 0, [])
        sim.op = "ones_like"
        seed = sim.new(out.shape, out.dtype)
        sim.flush()
        start, mark = live(sim, values), len(sim.events)
        sim.phase = "backward"
        sim.backward([(out.node, out.out_index, seed)])
        backward_peak = peak_since(sim, mark, values) - start
        after_backward = live(sim, values) - start
        leaves = [t.param for t in (*xs, *params) if t.requires_grad]
        reused = inputs | {id(seed.storage)}
        sizes = [0 if p.grad is None or id(p.grad.storage) in reused else evaluate(p.grad.storage.size, values)
                 for p in leaves]
        return Measured(forward_peak, after, saved_new, saved_inputs, 0, backward_peak, after_backward, sizes)

    m = run(True)
    m.graph_only = run(False)
    return m
