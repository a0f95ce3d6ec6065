"""One model's weight inventory as text, JSON or CSV rows: every template with its shape, layers and dtype rule."""

from __future__ import annotations

from typing import Any

from peftcalc.model.inventory import format_layers
from peftcalc.model.spec import ModelSpec, layer_indices
from peftcalc.render.text import fmt_count, table

HEADER = ["name", "kind", "shape", "layers", "count", "params", "dtype"]


def _layers(name: str, layers: tuple[int, ...], count: int) -> str:
    return format_layers(list(layer_indices(layers, count))) if "{i}" in name else "-"


def inventory_rows(spec: ModelSpec) -> list[list[Any]]:
    """[name, kind, shape, layers, count, params, dtype rule] per template: linears (weight + bias), other
    parameters, buffers (params 0: not parameters)."""
    rows: list[list[Any]] = []
    for l in spec.linears:
        kind = "head (tied)" if l.head and l.tied else "head" if l.head else "linear"
        rows.append([l.name, kind, f"{l.out_features}x{l.in_features}" + (" +bias" if l.bias else ""),
                     _layers(l.name, l.layers, l.count), l.count, l.total_params, l.dtype or "-"])
    for p in spec.others:
        rows.append([p.name, p.kind, "x".join(map(str, p.shape)) or str(p.numel), _layers(p.name, p.layers, p.count),
                     p.count, p.total_params, p.dtype or "-"])
    for b in spec.buffers:
        rows.append([b.name, "buffer", "x".join(map(str, b.shape)) or str(b.numel), _layers(b.name, b.layers, b.count),
                     b.count, 0, b.dtype or "-"])
    return rows


def origin_line(spec: ModelSpec) -> str:
    d = spec.derivation
    if d is None:
        return "inventory: the hand-written family builder (peftcalc/model/families/)" if not spec.is_inferred else \
            f"inventory: inferred from --params ({spec.source})"
    return (f"inventory: derived: transformers {d.transformers_version} built {d.model_class} from the config on the "
            f"meta device; key {d.key}" + "".join(f"\n  {n}" for n in d.notes))


def inventory_text(spec: ModelSpec) -> str:
    rows = [[r[0], r[1], r[2], r[3], str(r[4]), fmt_count(r[5]), r[6]] for r in inventory_rows(spec)]
    head = [f"{spec.name} ({spec.family}): {spec.total_params:,} parameters", f"source: {spec.source}", origin_line(spec),
            ""]
    return "\n".join(head) + table(HEADER, rows, align_left=4)
