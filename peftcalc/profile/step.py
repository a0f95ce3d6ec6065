"""A traced step as data: its moments (every local maximum of the live bytes), what each traced layer held in each
state, the live bytes after forward and the gradients. As traced (`Timeline`, whole bytes at one batch and
sequence length: peftcalc/measure/timeline.py records it) and as fitted (`Step`, every count a polynomial in B and
S: peftcalc/profile/align.py fits it).

Layer states follow stepsim's (peftcalc/stepsim/engine.py `Stack`): 0 not run, 1 done with forward, 2 holding its
saved tensors in backward, 3 done with backward; a running layer is RUNNING in the moment's `states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peftcalc.stepsim.poly import Poly

RUNNING = -1
Bytes = TypeVar("Bytes")  # int (traced) or Poly (fitted)


@dataclass(frozen=True)
class Moment(Generic[Bytes]):
    """One local maximum of the live bytes."""

    phase: str  # "forward" or "backward"
    layer: int | None  # the traced layer running (None: outside the layers)
    states: tuple[int, ...]  # every traced layer's state
    live: Bytes  # bytes live above the step's start
    op: str  # the operator whose output made it


@dataclass
class Timeline:
    """One traced step at one size, in whole bytes."""

    moments: list[Moment[int]] = field(default_factory=list)
    held: dict[int, list[int]] = field(default_factory=dict)  # state -> bytes each traced layer holds
    after_forward: int = 0
    gradients: int = 0  # all parameter gradients when backward ends
    layer_gradients: list[int] = field(default_factory=list)  # those of each layer's parameters


@dataclass(frozen=True)
class Step:
    """A traced step as polynomials in B and S."""

    moments: tuple[Moment[Poly], ...]
    held: dict[int, list[Poly]]
    after_forward: Poly
    gradients: Poly
    layer_gradients: tuple[Poly, ...]
