"""Derived inventories, without torch: the ModelSpec of an architecture that has no hand-written family, loaded
from the JSON inventory peftcalc/measure/derive.py reads off the transformers model.

Where an inventory comes from, first hit wins:

1. shipped with the package for catalogue models (`model/inventories/<catalogue name>[.full].json`);
2. the user's cache: `$XDG_CACHE_HOME/peftcalc/inventories/` (default `~/.cache/peftcalc/...`), one file per
   key `<sha256 of the config, 32 hex>-<scope>-transformers<version>.json` (the installed transformers
   version; without transformers, the newest cached version);
3. derived now with transformers (the `measure` extra), then cached.

The inventory format (INVENTORY_FORMAT) is plain JSON: `linears` and `params` and `buffers` as name templates
with their shapes, kinds, dtype rules and layer index sets ("0-2,5"), the Architecture numbers under `arch`, and
the config transformers built from under `config`. ARCHITECTURE.md documents it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from peftcalc.errors import ConfigError, PeftcalcError
from peftcalc.model.inventory import INVENTORY_FORMAT, config_sha256, inventory_key, inventory_text, parse_layers
from peftcalc.model.spec import Architecture, Derivation, Linear, ModelSpec, Params, Scope
from peftcalc.usercache import cache_root

SHIPPED_DIR = Path(__file__).with_name("inventories")
SCOPES: tuple[Scope, ...] = ("text", "full")


def cache_dir() -> Path:
    """peftcalc's folder of the user's cache (usercache.py)."""
    return Path(cache_root())


def _layers(entry: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """A template's (explicit layers, count): () for layers 0 .. n-1, as the hand-written families have it."""
    if "layers" not in entry:
        return (), 1
    idx = parse_layers(entry["layers"]) if entry["layers"] else ()
    return (() if idx == tuple(range(len(idx))) else idx), len(idx)


def _linear(e: Mapping[str, Any]) -> Linear:
    layers, count = _layers(e)
    return Linear(e["name"], e["in"], e["out"], e["bias"], count, head=e.get("head", False),
                  conv1d=e.get("conv1d", False), block=e.get("block", ""), tied=e.get("tied", False),
                  layers=layers, dtype=e.get("dtype", ""))


def _params(e: Mapping[str, Any]) -> Params:
    layers, count = _layers(e)
    shape = tuple(e["shape"])
    return Params(e["name"], math.prod(shape), e["kind"], count, shape if len(shape) >= 2 else (), layers,
                  e.get("dtype", ""))


def spec_from_inventory(inv: Mapping[str, Any], name: str, source: str, cfg: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec of an inventory (INVENTORY_FORMAT) of config `cfg`."""
    if inv.get("format") != INVENTORY_FORMAT:
        raise ConfigError(f"{source}: inventory format {inv.get('format')!r} is not {INVENTORY_FORMAT}; re-derive it")
    derivation = Derivation(
        key=inventory_key(inv["config_sha256"], inv["scope"], inv["transformers_version"]),
        config_sha256=inv["config_sha256"], scope=inv["scope"], model_class=inv["model_class"],
        model_type=inv["model_type"], transformers_version=inv["transformers_version"],
        multimodal=inv["multimodal"], notes=tuple(inv.get("notes", ())), config=inv["config"])
    return ModelSpec(name, Architecture(**inv["arch"]), tuple(_linear(e) for e in inv["linears"]),
                     tuple(_params(e) for e in inv["params"]), source, dict(cfg),
                     buffers=tuple(_params(e) for e in inv["buffers"]), derivation=derivation)


def installed_version(package: str) -> str | None:
    """A package's installed version, without importing it: the name of its `.dist-info` folder beside it
    (importlib.metadata would cost ~80 ms on every estimate); importlib.metadata for other layouts."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    found = sorted(site.glob(f"{package}-*.dist-info"))
    if len(found) == 1:
        return found[0].name[len(package) + 1: -len(".dist-info")]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def installed_transformers() -> str | None:
    """The installed transformers version (no import), or None."""
    return installed_version("transformers")


def cached_path(cfg_sha: str, scope: Scope) -> Path | None:
    """The cached inventory for this config and scope: the installed transformers' version, or without
    transformers the newest cached one."""
    folder = cache_dir() / "inventories"
    tf = installed_transformers()
    if tf is not None:
        p = folder / f"{inventory_key(cfg_sha, scope, tf)}.json"
        return p if p.is_file() else None
    found = sorted(folder.glob(f"{cfg_sha[:32]}-{scope}-transformers*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def shipped_path(name: str, scope: Scope) -> Path:
    return SHIPPED_DIR / (f"{name}.json" if scope == "text" else f"{name}.{scope}.json")


def read_inventory(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the inventory {path}: {e}; delete it to derive it again") from None


def derive(cfg: Mapping[str, Any], scope: Scope, source: str) -> dict[str, Any]:
    """Derive an inventory now with transformers (the measure extra) and cache it."""
    try:
        from peftcalc.measure.derive import inventory
    except ImportError as e:
        raise ConfigError(
            f"{source}: model_type {cfg.get('model_type')!r} has no hand-written family; peftcalc reads its "
            f"weights off the transformers model, which needs torch and transformers ({e.name} is missing): "
            "pip install 'peftcalc[measure]'") from None
    inv = inventory(cfg, scope)
    from peftcalc.atomic import write_text_atomic

    path = cache_dir() / "inventories" / f"{inventory_key(inv['config_sha256'], scope, inv['transformers_version'])}.json"
    try:
        write_text_atomic(path, inventory_text(inv))
    except PeftcalcError:  # an unwritable cache costs the next run time, not this answer
        pass
    return inv


def derived_spec(cfg: Mapping[str, Any], name: str, source: str, scope: Scope = "text",
                 shipped: str | None = None) -> ModelSpec:
    """The ModelSpec of a config without a hand-written family: shipped, cached or derived now (in that order).
    `shipped` names a catalogue entry whose inventory ships with the package."""
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    sha = config_sha256(cfg)
    path = shipped_path(shipped, scope) if shipped else None
    if path is None or not path.is_file():
        path = cached_path(sha, scope)
    inv = read_inventory(path) if path is not None else derive(cfg, scope, source)
    if inv.get("config_sha256") != sha:
        raise ConfigError(f"{path}: the inventory is of another config (sha256 {inv.get('config_sha256')}); re-derive it")
    return spec_from_inventory(inv, name, source, cfg)
