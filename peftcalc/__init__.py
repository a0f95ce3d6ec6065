"""peftcalc: how much memory, disk, time and money fine-tuning a language model costs with each method.

The Python API, loaded on first use (so `import peftcalc` and the CLI stay light — no torch):

    import peftcalc
    cfg = peftcalc.from_file("qlora.yml")                        # an axolotl/TRL/torchtune/LLaMA-Factory/peft file
    r = peftcalc.estimate(cfg, model="llama-3-8b", batch=1)       # what `peftcalc estimate --from` prints
    print(r.text()); r.to_dict()
    p = peftcalc.plan(model="llama-3.1-8b", method="lora", gpu=["a100-80gb"], tokens=50e6)

`peftcalc.estimate` is also the module of the analytic estimate (`from peftcalc.estimate import estimate_method`):
called, it is the API function above.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["estimate", "plan", "from_file"]


class _Estimate(types.ModuleType):
    """The module peftcalc.estimate, callable as the API's estimate()."""

    def __call__(self, *files: Any, **options: Any) -> Any:
        from peftcalc.api import estimate

        return estimate(*files, **options)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing the submodule peftcalc.estimate binds it here: make that module callable
        if name == "estimate" and isinstance(value, types.ModuleType) and not isinstance(value, _Estimate):
            value.__class__ = _Estimate
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name == "estimate":
        import importlib

        return importlib.import_module("peftcalc.estimate")
    if name in ("plan", "from_file"):
        from peftcalc import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftcalc' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
