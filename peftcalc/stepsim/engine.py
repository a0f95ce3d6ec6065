"""The engine: symbolic tensors and storages, autograd nodes, the forward's live bytes and the backward pass.

Mirrors what the traced backend counts (peftcalc/measure/meter.py): every storage an operator creates is
live from its creation until nothing refers to it. Here a `Storage` is a Python object whose `__del__`
subtracts its bytes, so family code written like the transformers code it mirrors frees temporaries where
Python, and so torch, does: when the last tensor or saved-tensor reference goes.

- A `Tensor` refers to its `Storage` (views share it) and to the `Node` that made it (its grad_fn).
- A `Node` refers to the storages its derivative formula saved, never to its own output tensor (as torch's
  SavedVariable does not), so graphs have no reference cycles and die with the loss.
- `backward` runs nodes in decreasing creation order, the order torch's engine runs them in (ready nodes by
  sequence number; AccumulateGrad at once). Gradients meeting at one input are summed out of place
  (`old + new`), as torch's InputBuffer does for tensor subclasses such as the traced backend's fake tensors;
  a gradient whose shape or dtype differs from its input's is reduced (`sum_to_size`) or cast afterwards,
  as the engine's `validate_outputs` does. A parameter's gradient is the last sum itself (stolen, no copy).
- Every allocation records the live bytes and the state of each stack's "mid" layer. Three layers per stack
  are simulated — the first, one middle layer standing for all repeated ones, the last — and `extrapolate`
  adds the other middle layers: at any moment each of them is either holding its saved tensors or done
  (holding its gradients), so live bytes are linear in their number.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from peftcalc.stepsim.poly import Dim, Poly, add_into, numel, scale
from peftcalc.units import DTYPE_BYTES

FLOATS = ("fp32", "bf16", "fp16")


INTS = ("bool", "uint8", "int8", "int32", "int64")  # torch's promotion order among the integer dtypes we use


def promote(a: str, b: str) -> str:
    """torch's type promotion between two tensors' dtypes (bf16 with fp16 gives fp32; a float wins over an
    integer; the wider integer wins; uint8 with int8, int16 in torch, does not occur here)."""
    if a == b:
        return a
    if a in FLOATS and b in FLOATS:
        return "fp32"
    if a in FLOATS or b in FLOATS:
        return a if a in FLOATS else b
    return max(a, b, key=INTS.index)


class Storage:
    """Bytes that live while something refers to them."""

    __slots__ = ("sim", "size", "tag", "index", "__weakref__")

    def __init__(self, sim: "Sim", size: Poly, tag: Any) -> None:
        self.sim = sim
        self.size = size
        self.tag = tag
        self.index = sim.allocations
        sim._alloc(self)

    def __del__(self) -> None:
        self.sim._free(self)


class Tensor:
    __slots__ = ("shape", "dtype", "storage", "node", "out_index", "requires_grad", "param")

    def __init__(self, shape: tuple[Dim, ...], dtype: str, storage: Storage | None, node: "Node | None" = None,
                 out_index: int = 0, requires_grad: bool = False, param: "Param | None" = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
        self.node = node
        self.out_index = out_index
        self.requires_grad = requires_grad
        self.param = param

    def __repr__(self) -> str:
        return f"T{self.shape}:{self.dtype}{'*' if self.requires_grad else ''}"


@dataclass(eq=False)
class Param:
    """A leaf that requires grad: a model parameter (its bytes are model states, counted in memory.py; its
    gradient is counted here), or the detached input of a recomputed checkpointed layer (`capture`)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    trainable: bool
    tag: Any = None  # (stack, role) of the layer it belongs to; None outside layers
    capture: bool = False
    holds: Any = None  # a leaf tensor's storage, alive as long as its AccumulateGrad (the graph) is
    uses: int = 0  # graph edges into its AccumulateGrad (recounted from the reachable graph when backward starts)
    received: int = 0
    pending: Tensor | None = None
    grad: Tensor | None = None


class Node:
    """An autograd node: edges to the inputs' nodes (or leaves), saved storages, a derivative formula."""

    __slots__ = ("seq", "name", "next", "saved", "backward", "inputs", "n_out", "tag", "ctx", "__weakref__")

    def __init__(self, seq: int, name: str, next_edges: list, saved: list, backward: Callable,
                 inputs: list, n_out: int, tag: Any, ctx: Any) -> None:
        self.seq = seq
        self.name = name
        self.next = next_edges
        self.saved = saved
        self.backward = backward
        self.inputs = inputs  # (shape, dtype) of each input, for validate_outputs
        self.n_out = n_out
        self.tag = tag
        self.ctx = ctx


@dataclass
class Event:
    phase: str  # "forward" or "backward"
    live: Poly
    states: tuple[int, ...]  # per stack, its mid layer's state (Stack.state)
    tag: Any  # (stack, role) of the layer running, None outside layers
    op: str
    index: int  # the allocation counter at this moment (the last allocation's index)
    entered: int = 0  # forward: simulated layers entered so far (over all stacks)
    outer_seq: int | None = None  # backward: sequence number of the outermost node running (a recomputed
    # checkpointed layer's nodes run inside its CheckpointFunction's node, which carries the forward's number)


@dataclass
class Stack:
    """A stack of repeated layers and what its simulated middle layer holds in each state:
    0 not run yet; 1 run, forward still going (holds `held[1]`: saved tensors and forward-only buffers such
    as key/value caches); 2 backward started, its own not yet (`held[2]`: what it saved for backward);
    3 its backward done (`held[3]`: its gradients, and gradients waiting for a node below, measured when
    the first layer's backward ends)."""

    name: str
    count: int  # layers in the real model
    first_start: int | None = None  # sequence number of the first layer's first node
    mid_start: int | None = None  # sequence number of the mid layer's first node
    top_start: int | None = None  # sequence number of the last layer's first node
    state: int = 0
    held: dict = field(default_factory=dict)


class Sim:
    """One simulated step: live bytes over time, and the autograd graph."""

    def __init__(self) -> None:
        self.live: Poly = {}
        self.live_by_tag: dict[Any, Poly] = {}
        self.events: list[Event] = []  # the live bytes at each local maximum (an allocation before a free)
        self.allocations = 0
        self._pending: tuple | None = None  # the last allocation's context, until a free makes it a maximum
        self.nodes: list[weakref.ref] = []  # in creation order; a graph no tensor reaches dies, as in torch
        self._seq = 0
        self.grad_enabled = True
        self.phase = "forward"
        self.tag: Any = None
        self.stacks: dict[str, Stack] = {}
        self.op = ""
        self.params: list[Param] = []
        self.debug: dict[int, tuple] | None = None  # id(storage) -> (op, size, tag) of live storages
        # A later micro-batch of gradient accumulation: every parameter already has its .grad (counted by the
        # caller, not here); AccumulateGrad adds each new gradient into it in place and the new one is freed.
        self.accumulating = False
        self.entered: set[tuple[str, str]] = set()  # (stack, role) of the simulated layers entered in forward
        self.marks: list[Event] = []  # moments at layer boundaries (`_mark`)
        self.outer_seq: int | None = None  # see Event.outer_seq

    # -- storages ---------------------------------------------------------------------------------------
    def _alloc(self, s: Storage) -> None:
        add_into(self.live, s.size)
        add_into(self.live_by_tag.setdefault(s.tag, {}), s.size)
        self.allocations += 1
        self._pending = (self.phase, tuple(k.state for k in self.stacks.values()), self.tag, self.op,
                         self.allocations, len(self.entered), self.outer_seq)
        if self.debug is not None:
            self.debug[id(s)] = (self.op, s.size, s.tag)

    def _mark(self, op: str) -> None:
        """Record the live bytes now as a moment in `marks` (not a local maximum of the replay's own allocations,
        so not among `events`; a pending allocation stays pending)."""
        self.marks.append(Event(self.phase, dict(self.live), tuple(k.state for k in self.stacks.values()),
                                 self.tag, op, self.allocations, len(self.entered), self.outer_seq))

    def flush(self) -> None:
        """Record the live bytes if the last change was an allocation (a local maximum)."""
        if self._pending is not None:
            phase, states, tag, op, index, entered, outer = self._pending
            self.events.append(Event(phase, dict(self.live), states, tag, op, index, entered, outer))
            self._pending = None

    def _free(self, s: Storage) -> None:
        if self._pending is not None:
            self.flush()
        add_into(self.live, s.size, -1)
        if self.debug is not None:
            self.debug.pop(id(s), None)
        add_into(self.live_by_tag[s.tag], s.size, -1)

    def new(self, shape: tuple[Dim, ...], dtype: str, node: Node | None = None, out_index: int = 0) -> Tensor:
        """A tensor with a fresh storage; it requires grad when it has a node."""
        st = Storage(self, scale(numel(shape), DTYPE_BYTES[dtype]), self.tag)
        return Tensor(shape, dtype, st, node, out_index, node is not None)

    def param(self, name: str, shape: tuple[int, ...], dtype: str, trainable: bool) -> Tensor:
        p = Param(name, shape, dtype, trainable, self.tag)
        self.params.append(p)
        return Tensor(shape, dtype, None, None, 0, trainable, p)

    def capture(self, shape: tuple[Dim, ...], dtype: str) -> Param:
        """The detached input of a recomputed checkpointed layer: a leaf whose gradient is handed back."""
        return Param("<checkpoint input>", shape, dtype, True, self.tag, capture=True)

    def require_grad(self, t: Tensor) -> Tensor:
        """`t.requires_grad_(True)` on a tensor that has no grad_fn: a leaf whose AccumulateGrad (and so the
        tensor, and later its .grad) lives as long as the graph."""
        if t.requires_grad:
            return t
        p = Param("<leaf>", t.shape, t.dtype, True, self.tag, capture=True, holds=t.storage)
        return Tensor(t.shape, t.dtype, t.storage, None, 0, True, p)

    def leaf(self, shape: tuple[Dim, ...], dtype: str) -> Tensor:
        """An input that exists before the step (token ids, labels): counted with the model states."""
        return Tensor(shape, dtype, None)

    # -- graph ------------------------------------------------------------------------------------------
    def node(self, name: str, inputs: Sequence[Tensor | None], saved: Sequence[Tensor | Storage | None],
             backward: Callable, ctx: Any = None, n_out: int = 1, force: bool = False) -> Node | None:
        """Record an operator's node when grad mode is on and an input requires grad (or `force`); only then
        does the operator keep `saved` (as torch's autograd does)."""
        if not self.grad_enabled or not (force or any(t is not None and t.requires_grad for t in inputs)):
            return None
        edges: list = []
        for t in inputs:
            if t is None or not t.requires_grad:
                edges.append(None)
            elif t.param is not None:
                t.param.uses += 1
                edges.append((t.param, 0))
            else:
                edges.append((t.node, t.out_index))
        keep = []
        for s in saved:
            st = s.storage if isinstance(s, Tensor) else s
            if st is not None:
                keep.append(st)
        n = Node(self._seq, name, edges, keep, backward,
                 [(t.shape, t.dtype) if t is not None else None for t in inputs], n_out, self.tag, ctx)
        self._seq += 1
        self.nodes.append(weakref.ref(n))
        return n

    # -- layers -----------------------------------------------------------------------------------------
    def enter_layer(self, stack: str, index: int, count: int) -> None:
        st = self.stacks.setdefault(stack, Stack(stack, count))
        r = role(index, count)
        if self.phase == "forward":
            if r == "mid" and st.mid_start is None:
                st.mid_start = self._seq
            if r == "first" and st.first_start is None:
                st.first_start = self._seq
            if r == "top" and st.top_start is None:
                st.top_start = self._seq
            self.entered.add((stack, r))
            self.tag = (stack, r)
            self._mark("enter")  # a layer's first moment (what FSDP2 gathers there differs: replay.Where.entering)
        self.tag = (stack, r)

    def leave_layer(self, stack: str, index: int, count: int) -> None:
        st = self.stacks[stack]
        r = role(index, count)
        if self.phase == "forward":
            if r == "mid":
                st.state = 1
            elif r == "top" and st.state == 1:
                st.held[1] = dict(self.live_by_tag.get((stack, "mid"), {}))
        self.tag = None

    def start_backward(self) -> None:
        """Forward is over: what each mid layer holds now is what it holds until its backward."""
        self.flush()
        self.phase = "backward"
        for name, st in self.stacks.items():
            st.held[2] = dict(self.live_by_tag.get((name, "mid"), {}))
            if st.state == 1:
                st.state = 2

    def end_backward(self) -> None:
        self.flush()
        for name, st in self.stacks.items():
            if 3 not in st.held:
                st.held[3] = dict(self.live_by_tag.get((name, "mid"), {}))

    # -- backward ---------------------------------------------------------------------------------------
    def backward(self, roots: list[tuple[Node, int, Tensor]], nodes: list[weakref.ref] | None = None) -> None:
        """Run the backward pass from `roots` (node, output index, gradient) over `nodes` (default: all)."""
        order = self.nodes if nodes is None else nodes
        buffers: dict[int, list] = {}
        for n, i, g in roots:
            buffers.setdefault(id(n), [None] * n.n_out)[i] = g
        self._count_dependencies([n for n, _, _ in roots])
        del roots
        g = None
        was, self.grad_enabled = self.grad_enabled, False
        outer = nodes is None
        for ref in reversed(order):
            n = ref()
            if n is None:
                continue
            buf = buffers.pop(id(n), None)
            if buf is None:
                continue
            if outer:
                self.outer_seq = n.seq
                for name, st in self.stacks.items():
                    if st.mid_start is not None and n.seq < st.mid_start:
                        st.state = 3
                    if st.first_start is not None and n.seq < st.first_start and 3 not in st.held:
                        st.held[3] = dict(self.live_by_tag.get((name, "mid"), {}))
            saved_tag, self.tag, self.op = self.tag, n.tag, n.name
            grads = n.backward(self, n, buf)
            del buf
            grads = self._validate(n, grads)
            n.saved = []
            for e, g in zip(n.next, grads):
                if e is None or g is None:
                    continue
                target, idx = e
                if isinstance(target, Param):
                    self._accumulate_param(target, g)
                else:
                    slot = buffers.setdefault(id(target), [None] * target.n_out)
                    slot[idx] = g if slot[idx] is None else self.accumulate(slot[idx], g)
            # drop every loop reference to a gradient or node now: a name still bound to the last input-gradient
            # list would keep it alive past the node that consumed it (torch frees it there)
            del grads
            g = n = slot = e = target = None
            self.tag = saved_tag
        self.grad_enabled = was

    def _count_dependencies(self, roots: list[Node]) -> None:
        """How many gradients each parameter will receive in this backward: its edges from the nodes reachable
        from the roots (torch's engine counts dependencies the same way; an edge from a branch dropped in
        forward, e.g. DoRA's lora_B(lora_A(eye)) used only detached, delivers nothing)."""
        counts: dict[int, int] = {}
        params: dict[int, Param] = {}
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for e in n.next:
                if e is None:
                    continue
                if isinstance(e[0], Param):
                    counts[id(e[0])] = counts.get(id(e[0]), 0) + 1
                    params[id(e[0])] = e[0]
                else:
                    stack.append(e[0])
        for key, p in params.items():
            p.uses, p.received, p.pending = counts[key], 0, None

    def _validate(self, n: Node, grads: list) -> list:
        """sum_to_size and dtype casts of gradients that do not match their input (torch's validate_outputs)."""
        out = list(grads)
        for i, (g, meta) in enumerate(zip(out, n.inputs)):
            if g is None or meta is None:
                continue
            shape, dtype = meta
            if numel(g.shape) != numel(shape):
                self.op = n.name + ".sum_to_size"
                out[i] = g = self.new(shape, g.dtype)
            if g.dtype != dtype:
                self.op = n.name + ".to"
                out[i] = self.new(shape, dtype)
            elif g.shape != shape:
                out[i] = Tensor(shape, g.dtype, g.storage)
        return out

    def accumulate(self, old: Tensor, new: Tensor) -> Tensor:
        """Two gradients for one input: `old + new`, a new tensor."""
        self.op = "accumulate"
        return self.new(old.shape, promote(old.dtype, new.dtype))

    def _accumulate_param(self, p: Param, g: Tensor) -> None:
        p.received += 1
        if p.pending is not None:
            g = self.accumulate(p.pending, g)
            p.pending = None
        if p.received < p.uses:
            p.pending = g
            return
        if self.accumulating and not p.capture:
            # torch's AccumulateGrad with an existing .grad and grad mode off: `variable.grad += new_grad` (in
            # place); new_grad dies here. The existing gradients are the caller's to count.
            p.grad = Tensor(g.shape, g.dtype, None)
            return
        if p.grad is None:
            p.grad = g  # stolen, no copy
        # else: AccumulateGrad adds into the existing .grad in place (`variable_grad += new_grad`, a second
        # backward into the same graph's leaves); `g` dies here



def extrapolated_moments(sim: Sim) -> tuple[list[Poly], list[Poly]]:
    """The live bytes of every recorded moment with the unsimulated middle layers added: (forward, backward).

    Outside a simulated middle layer, each of the `count - 3` others is in the state the simulated one is
    in (`Stack.state`) and holds what it holds then. Inside it, the others are split: in forward, layers
    below it have run and layers above not yet; in backward, layers above are done and layers below still
    hold their saved tensors. Live bytes are linear in how many are on each side, so the largest moment is
    at one end: each such moment gives two candidates, all others on one side or all on the other (layer
    0 can allocate less than a middle layer, e.g. when its input needs no gradient, so neither end may be
    dropped)."""
    names = list(sim.stacks)
    extra = {name: max(0, st.count - 3) for name, st in sim.stacks.items()}
    held = {name: st.held for name, st in sim.stacks.items()}
    fwd: list[Poly] = []
    bwd: list[Poly] = []
    for e in sim.events:
        base = dict(e.live)
        inside = e.tag[0] if e.tag is not None and e.tag[1] == "mid" else None
        for name, state in zip(names, e.states):
            if name != inside and extra[name] and state:
                add_into(base, scale(held[name].get(state, {}), extra[name]))
        out = fwd if e.phase == "forward" else bwd
        if inside is None or not extra[inside]:
            out.append(base)
            continue
        ends = (0, 1) if e.phase == "forward" else (2, 3)  # (not run, run) / (still holding, done)
        for state in ends:
            p = dict(base)
            add_into(p, scale(held[inside].get(state, {}), extra[inside]))
            out.append(p)
    return fwd, bwd


def role(index: int, count: int) -> str:
    """Which simulated layer this is: the first, one middle layer standing for all, or the last."""
    if index == 0:
        return "first"
    if index == count - 1:
        return "top"
    return "mid"


def layer_indices(count: int) -> list[int]:
    """The layers to simulate out of `count`: the first, one middle layer and the last."""
    return list(range(count)) if count <= 3 else [0, 1, count - 1]
