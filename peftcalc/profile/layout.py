"""Which layers a profile traces, and how the real model's layers map onto them.

A model's decoder layers are of a few types: what differs between them is in the config's per-layer entries
(`layer_types`: sliding / full / linear attention; `hybrid_override_pattern`: Mamba, attention, MLP; the dense
layers of a mixture of experts: `mlp_only_layers`, `first_k_dense_replace`) and in the weights each layer has.
The traced model keeps the real model's first and last layers, and one middle layer of each type, in their real
order (`Layout.selected`); a second layout adds one more middle layer, to measure what outside the layers grows
with their number (prefix tuning's prompt encoder output). `reduce_config` writes the config of such a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation
from peftcalc.model.spec import ModelSpec

# Config entries that list layer indices (not one value per layer), and entries that count leading layers.
INDEX_LISTS = ("mlp_only_layers", "full_attn_idxs", "no_rope_layer_idxs")
LEADING_COUNTS = ("first_k_dense_replace", "num_dense_layers")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


# Per-layer lists whose length is the number of layers where the config has no count (Nemotron-H).
LAYER_LISTS = ("layers_block_type", "layer_types")


def layer_count_key(cfg: Mapping[str, Any]) -> str | None:
    return next((k for k in LAYER_COUNT_KEYS if isinstance(cfg.get(k), int)), None)


def layer_count(cfg: Mapping[str, Any]) -> int:
    key = layer_count_key(cfg)
    if key is not None:
        return int(cfg[key])
    for k in LAYER_LISTS:
        if isinstance(cfg.get(k), (list, tuple)):
            return len(cfg[k])
    raise PeftcalcError("traced profiles need the layer count at the config's top level; this config names none "
                        "(a multimodal config's nested text_config is not profiled yet)")


def per_layer_values(cfg: Mapping[str, Any], count: int) -> dict[str, Sequence[Any]]:
    """The config's entries with one value per layer: lists named for layers, blocks or a pattern (`layer_types`,
    `layers_block_type`, `no_rope_layers`), and pattern strings (Nemotron-H's `hybrid_override_pattern`); by name,
    so that a list or a version string that happens to have as many items is not taken for one."""
    out: dict[str, Sequence[Any]] = {}
    for k, v in cfg.items():
        per_layer = (isinstance(v, (list, tuple)) and any(w in k for w in ("layer", "block", "pattern"))) or \
            (isinstance(v, str) and "pattern" in k)
        if per_layer and len(v) == count and count > 1 and k not in INDEX_LISTS:
            out[k] = v
    return out


def config_layer_types(cfg: Mapping[str, Any], count: int) -> list[tuple]:
    """What the config says about each layer: its per-layer entries, and membership in index lists and
    leading counts."""
    lists = per_layer_values(cfg, count)
    types = []
    for i in range(count):
        t: list[Any] = [(k, _hashable(v[i])) for k, v in sorted(lists.items())]
        t += [(k, i in cfg[k]) for k in INDEX_LISTS if isinstance(cfg.get(k), (list, tuple))]
        t += [(k, i < cfg[k]) for k in LEADING_COUNTS if isinstance(cfg.get(k), int)]
        types.append(tuple(t))
    return types


def _hashable(v: Any) -> Hashable:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _by_layer(groups: Iterable[Any], count: int) -> list[set]:
    """For each layer, the (name template, shape) of the groups present in it."""
    out: list[set] = [set() for _ in range(count)]
    for g in groups:
        if "{i}" in g.name:
            shape = (g.out_features, g.in_features) if hasattr(g, "in_features") else g.shape
            for i in (getattr(g, "layers", ()) or range(g.count)):
                if i < count:
                    out[i].add((g.name, shape))
    return out


def layer_types(spec: ModelSpec, cfg: Mapping[str, Any], adaptation: Adaptation, checkpointing: bool) -> list[tuple]:
    """Each layer's type: what the config says about it, the weights it has, what the method trains in it, and
    whether its input needs a gradient. The last depends on the layer's place: behind the first layer that
    trains anything (or a trained embedding, virtual tokens, or checkpointing, whose input hook makes the
    embeddings' output require grad) a layer saves what its input's gradient needs, before it not (LoRA on the
    attention projections of a hybrid leaves the linear-attention layers before the first attention layer
    without a graph)."""
    count = layer_count(cfg)
    weights = _by_layer((*spec.linears, *spec.others), count)
    trained = _by_layer([g for g in adaptation.tensors if g.trainable], count)
    upstream = checkpointing or bool(adaptation.extra_tokens) or any(
        g.trainable and "{i}" not in g.name and "embed" in g.name for g in adaptation.tensors)
    types = []
    for i, (c, w, t) in enumerate(zip(config_layer_types(cfg, count), weights, trained)):
        types.append((c, frozenset(w), frozenset(t), upstream))
        upstream = upstream or bool(t)
    return types


@dataclass(frozen=True)
class Layout:
    """A traced model's layers as real layer indices (in order), and the real model's layer count."""

    selected: tuple[int, ...]
    real_count: int

    @property
    def count(self) -> int:
        return len(self.selected)


def layouts(types: Sequence[Hashable]) -> tuple[Layout, Layout]:
    """The two traced layouts of a model whose layer i has type types[i]: first, one middle layer of each type
    (its first occurrence), last; and the same with one more middle layer (the next occurrence of the first
    middle type, else any other middle layer)."""
    n = len(types)
    if n < 3:
        raise ValueError("a profile needs a model of 3 or more layers")
    middle = range(1, n - 1)
    first_of: dict[Hashable, int] = {}
    for i in middle:
        first_of.setdefault(types[i], i)
    a = sorted({0, n - 1, *first_of.values()})
    extra = next((i for i in middle if i not in a and types[i] == types[a[1]]), None)
    if extra is None:
        extra = next((i for i in middle if i not in a), None)
    if extra is None:  # every middle layer is traced already: the traced model is the real one
        return Layout(tuple(a), n), Layout(tuple(a), n)
    return Layout(tuple(a), n), Layout(tuple(sorted(a + [extra])), n)


def representative(types: Sequence[Hashable], layout: Layout) -> list[int]:
    """For each real layer, the traced layer standing for it: itself if traced, else the traced middle
    layer of its type."""
    pos = {r: k for k, r in enumerate(layout.selected)}
    of_type: dict[Hashable, int] = {}
    for k, r in enumerate(layout.selected):
        if 0 < k < layout.count - 1:
            of_type.setdefault(types[r], k)
    return [pos[r] if r in pos else of_type[types[r]] for r in range(len(types))]


def reduce_config(cfg: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    """The config of a model with only the layout's layers: the layer count, per-layer entries, index lists
    and leading counts rewritten for the selected layers."""
    key, count = layer_count_key(cfg), layer_count(cfg)
    sel = layout.selected
    out = dict(cfg)
    if key is not None:
        out[key] = len(sel)
    for k, v in per_layer_values(cfg, count).items():
        picked = [v[i] for i in sel]
        out[k] = "".join(picked) if isinstance(v, str) else type(v)(picked)
    for k in INDEX_LISTS:
        if isinstance(cfg.get(k), (list, tuple)):
            out[k] = [j for j, r in enumerate(sel) if r in cfg[k]]
    for k in LEADING_COUNTS:
        if isinstance(cfg.get(k), int):
            out[k] = sum(1 for r in sel if r < cfg[k])
    return out
