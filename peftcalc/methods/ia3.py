"""IA3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations.

A vector per adapted linear: out_features long, or in_features for feed-forward modules (peft scales
their input). peft's per-family defaults choose the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.methods.targets import default_ia3_targets, select, unmatched
from peftcalc.model.spec import Linear, ModelSpec


def is_feedforward(lin: Linear, feedforward: tuple[str, ...]) -> bool:
    """peft's rule for feed-forward modules (IA3Model._check_target_module_feedforward): a plain suffix
    match, without the '.' boundary of target matching."""
    return any(lin.name.endswith(f) for f in feedforward)


@dataclass(frozen=True)
class IA3:
    targets: tuple[str, ...] | None = None
    feedforward: tuple[str, ...] | None = None  # which of the targets scale their input

    @property
    def name(self) -> str:
        return "ia3"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        notes: list[str] = []
        if self.targets is None:
            targets, ff, note = default_ia3_targets(spec)
            notes += [note] if note else []
            missing = unmatched(spec, targets)
            if missing:
                notes.append(f"peft's default IA3 target(s) {', '.join(missing)} do not exist in {spec.name}; skipped as peft does")
            chosen = select(spec, targets, strict=False)
        else:
            # peft: feedforward_modules=None takes the family's default list, explicit targets or not.
            ff = self.feedforward if self.feedforward is not None else default_ia3_targets(spec)[1]
            chosen = select(spec, self.targets)
        added = tuple(self._vector(l, is_feedforward(l, ff)) for l in chosen)
        return Adaptation("ia3", spec, base_tensors(spec, False) + added, saved=added,
                          adapted=tuple(l.name for l in chosen), notes=tuple(notes))

    @staticmethod
    def _vector(lin: Linear, feedforward: bool) -> TensorGroup:
        """peft's ia3_l: (1, in_features) for feed-forward modules, (out_features, 1) otherwise."""
        shape = (1, lin.in_features) if feedforward else (lin.out_features, 1)
        return TensorGroup(lin.name + ".ia3_l", shape[0] * shape[1], lin.count, True, True, shape=shape, layers=lin.layers)
