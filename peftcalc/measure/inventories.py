"""The inventories shipped for the catalogue (peftcalc/model/inventories/): one per catalogue model without a
hand-written family, text-only, and whole for multimodal checkpoints (`<name>.full.json`), so that `peftcalc
estimate --model qwen3-8b` needs no torch. `python -m peftcalc.measure.inventories` regenerates them; a slow test
regenerates them in memory and compares byte for byte."""

from __future__ import annotations

import sys

from peftcalc.atomic import write_text_atomic
from peftcalc.measure.derive import inventory
from peftcalc.model.catalogue import entry, model_names
from peftcalc.model.derived import SHIPPED_DIR, shipped_path
from peftcalc.model.families import FAMILIES
from peftcalc.model.inventory import inventory_text


def catalogue_inventories() -> dict[str, str]:
    """File name -> text of every inventory shipped for the catalogue."""
    out: dict[str, str] = {}
    for name in model_names():
        cfg = entry(name)["config"]
        if cfg.get("model_type") in FAMILIES:
            continue
        text = inventory(cfg, "text")
        out[shipped_path(name, "text").name] = inventory_text(text)
        if text["multimodal"]:
            out[shipped_path(name, "full").name] = inventory_text(inventory(cfg, "full"))
    return out


def main() -> int:
    """Rewrite peftcalc/model/inventories/ from the catalogue (stale files removed)."""
    files = catalogue_inventories()
    for stale in {p.name for p in SHIPPED_DIR.glob("*.json")} - set(files):
        (SHIPPED_DIR / stale).unlink()
    for fname, text in files.items():
        write_text_atomic(SHIPPED_DIR / fname, text)
    print(f"{len(files)} inventories in {SHIPPED_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
