"""Every other peft method, by peft's name (`loha`, `vera`, `oft` ...): the Adaptation read off the real peft model.

peftcalc's own methods (full, lora, dora, qlora, adapter, prompt, prefix, ptuning, ia3) are formulas over the
inventory. For the rest of peft's tuners, peftcalc/measure/peft_derive.py applies the real peft config to the model
built on the meta device and records every tensor the method adds (shape, dtype, trainability, layers), what
`get_peft_model_state_dict` saves, the buffers it adds and the modules it adapted: exact by construction. The
result is plain JSON, cached in `$XDG_CACHE_HOME/peftcalc/adaptations/` under a key of the model, the method, its
options and the peft and transformers versions, so the second estimate needs no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.methods.peft_catalogue import PeftRequest
from peftcalc.model.derived import cache_dir, installed_transformers, installed_version
from peftcalc.model.inventory import config_sha256, parse_layers
from peftcalc.model.spec import ModelSpec


@dataclass(frozen=True)
class PeftMethod(PeftRequest):
    """A peft method by peft's name, with peftcalc's shared options and peft config fields (--peft-option)."""

    @property
    def name(self) -> str:
        return self.peft_type

    def adapt(self, spec: ModelSpec) -> Adaptation:
        if self.rank is not None and self.rank <= 0:
            raise PeftcalcError(f"--rank must be a positive integer, got {self.rank}")
        if spec.is_inferred:
            raise PeftcalcError(f"--method {self.peft_type} is derived from peft's real model, which a bare --params "
                                "count does not have; give --model or --config")
        data = cached_or_derived(self, spec)
        return adaptation_from_json(data, spec)


def model_key(spec: ModelSpec) -> str:
    """The model part of a derived adaptation's key: the derived inventory's key, or a hand-written family's config."""
    if spec.derivation is not None:
        return spec.derivation.key
    return f"{spec.family}-{config_sha256(spec.hf_config)[:32]}-transformers{installed_transformers()}"


def installed_peft() -> str | None:
    return installed_version("peft")


def adaptation_key(method: PeftMethod, spec: ModelSpec) -> str:
    text = json.dumps(method.key_data(model_key(spec)), sort_keys=True)
    return f"{method.peft_type}-{hashlib.sha256(text.encode()).hexdigest()[:32]}-peft{installed_peft()}"


def cached_or_derived(method: PeftMethod, spec: ModelSpec) -> dict[str, Any]:
    """The derived adaptation (JSON) from the cache, else derived now with torch, transformers and peft."""
    path = cache_dir() / "adaptations" / f"{adaptation_key(method, spec)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a damaged cache entry is derived again
    try:
        from peftcalc.measure.peft_derive import derive_adaptation
    except ImportError as e:
        raise PeftcalcError(f"--method {method.peft_type} is read off peft's real model, which needs torch, transformers "
                            f"and peft ({e.name} is missing): pip install 'peftcalc[measure]'") from None
    data = derive_adaptation(method, spec, model_key(spec))
    from peftcalc.atomic import write_text_atomic

    try:
        write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    except PeftcalcError:
        pass  # an unwritable cache costs the next run time, not this answer
    return data


def _group(e: Mapping[str, Any], trainable: bool, added: bool) -> TensorGroup:
    shape = tuple(e["shape"])
    numel = 1
    for d in shape:
        numel *= d
    layers = parse_layers(e["layers"]) if e.get("layers") else ()
    count = len(layers) if "{i}" in e["name"] else 1
    if layers == tuple(range(count)):
        layers = ()
    return TensorGroup(e["name"], numel, count, trainable, added, shape=shape if len(shape) >= 2 else (),
                       layers=layers, dtype=e.get("dtype", ""))


def adaptation_from_json(data: Mapping[str, Any], spec: ModelSpec) -> Adaptation:
    """The Adaptation of a derived-adaptation JSON: the spec's base tensors (those peft made trainable marked so)
    plus every tensor the method added."""
    made_trainable = set(data["base_trainable"])
    base = tuple(TensorGroup(g.name, g.numel, g.count, g.name in made_trainable, False, g.format, g.shape, g.layers,
                             g.dtype) for g in base_tensors(spec, False))
    added = tuple(_group(e, e["trainable"], True) for e in data["added"])
    saved = tuple(_group(e, True, True) for e in data["saved"])
    buffers = tuple(_group(e, False, True) for e in data["buffers"])
    return Adaptation(data["peft_type"], spec, base + added, saved=saved, extra_tokens=data["extra_tokens"],
                      prefix_tokens=data["prefix_tokens"],
                      adapted=tuple(data["adapted"]), notes=tuple(data["notes"]), saved_keys_exact=True,
                      buffers=buffers, peft_type=data["peft_type"])
