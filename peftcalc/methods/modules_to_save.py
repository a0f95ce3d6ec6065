"""peft's `modules_to_save`: full trainable copies of whole modules beside any adapter (the embedding and the
output head when a vocabulary grows, a classifier head).

peft (utils/other.py `_set_trainable`, `ModulesToSaveWrapper.update`) wraps every module whose name ends with
one of the given strings (a plain suffix test over `named_modules()`): it keeps the original, frozen, and adds
`modules_to_save.default`, a `copy.deepcopy` of it that trains — in the module's own dtype (peft's
autocast_adapter_dtype casts tuner layers only) — and that the forward runs instead. A head tied to the
embedding is untied by the copy. The checkpoint saves each copy under the original parameter's name
(`get_peft_model_state_dict`). Counts are tested against peft on real models (tests/methods).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, Method, TensorGroup
from peftcalc.model.spec import ModelSpec

COPY = "modules_to_save.default"


@dataclass(frozen=True)
class ModulesToSave:
    """`inner` with trainable copies of the modules `modules` names."""

    inner: Method
    modules: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.inner.name

    def adapt(self, spec: ModelSpec) -> Adaptation:
        base = self.inner.adapt(spec)
        if base.trains_base:
            raise PeftcalcError("--modules-to-save adds trainable copies beside an adapter; full fine-tuning already "
                                "trains every module")
        groups = module_parameters(spec, self.modules)
        adapted = set(base.adapted)
        quantized = {g.name for g in base.tensors if g.format != "dense"}
        for module, params in groups:
            if module in adapted:
                raise PeftcalcError(f"{module.replace('{i}', 'N')} is both adapted and in --modules-to-save; peft "
                                    "wraps a module one way")
            inside = [a for a in adapted if a.startswith(module + ".")]
            if inside:  # peft leaves targets inside a saved module unadapted (or finds nothing to adapt)
                raise PeftcalcError(f"--modules-to-save {module.replace('{i}', 'N')} holds modules the method adapts "
                                    f"({inside[0].replace('{i}', 'N')}); name modules outside the targets")
            if any(p.name in quantized for p in params):
                raise PeftcalcError(f"{module.replace('{i}', 'N')} is quantized: a trainable copy of a quantized "
                                    "module is not modelled")
        copies, saved = [], []
        for module, params in groups:
            for p in params:
                leaf = p.name[len(module) + 1:]
                copies.append(TensorGroup(f"{module}.{COPY}.{leaf}", p.numel, p.count, True, False, shape=p.shape))
                saved.append(replace(copies[-1], name=p.name))
        names = ", ".join(m.replace("{i}", "N") for m, _ in groups)
        note = (f"modules_to_save: trainable full copies of {names} in the model dtype (peft keeps the frozen "
                "originals too); they are saved with the adapter")
        return replace(base, tensors=base.tensors + tuple(copies), saved=base.saved + tuple(saved),
                       notes=base.notes + (note,))


def module_parameters(spec: ModelSpec, targets: tuple[str, ...]) -> list[tuple[str, list[TensorGroup]]]:
    """The modules `targets` select (peft: a module's full name ends with a target) and their parameters, as
    they are before any method: every linear (weight, bias; a tied head's own weight is the embedding's) and every
    other parameter of the inventory."""
    params = _parameters(spec)
    modules = sorted({name.rsplit(".", 1)[0] for name in params})
    chosen: list[str] = []
    for target in targets:
        hits = [m for m in _with_parents(modules) if m.endswith(target)]
        if not hits:
            # (the inventory groups each layer's norms: per-layer norm modules are not selectable here)
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules} - {"{i}", "norms"})
            raise PeftcalcError(f"--modules-to-save {target}: no module of {spec.name} ends with it; modules with "
                                f"parameters: {', '.join(leaves)}")
        chosen += [h for h in hits if h not in chosen]
    for a in chosen:
        inner = [b for b in chosen if b != a and b.startswith(a + ".")]
        if inner:
            raise PeftcalcError(f"--modules-to-save selects {a.replace('{i}', 'N')} and, inside it, "
                                f"{inner[0].replace('{i}', 'N')}; name one of them")
    return [(m, [g for n, g in params.items() if n.startswith(m + ".")]) for m in chosen]


def _parameters(spec: ModelSpec) -> dict[str, TensorGroup]:
    """Every parameter by name. A tied head owns no weight, but its copy is a module of its own with a weight
    of the embedding's shape, so it is listed with that shape."""
    out: dict[str, TensorGroup] = {}
    for lin in spec.linears:
        out[lin.name + ".weight"] = TensorGroup(lin.name + ".weight", lin.weight_params, lin.count, False, False,
                                                shape=(lin.out_features, lin.in_features))
        if lin.bias:
            out[lin.name + ".bias"] = TensorGroup(lin.name + ".bias", lin.out_features, lin.count, False, False)
    for p in spec.others:
        out[p.name] = TensorGroup(p.name, p.numel, p.count, False, False, shape=p.shape)
    return out


def _with_parents(modules: list[str]) -> list[str]:
    """Every module path and each of its parents (peft tests every name of named_modules())."""
    out: dict[str, None] = {}
    for m in modules:
        parts = m.split(".")
        for k in range(1, len(parts) + 1):
            out[".".join(parts[:k])] = None
    return list(out)
