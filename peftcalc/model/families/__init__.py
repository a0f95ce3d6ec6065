"""One builder per Hugging Face `model_type`: config dict -> ModelSpec, with transformers' defaults.

Each builder reads a `config.json` as transformers would (its defaults for missing keys) and lists every
parameter the real implementation creates. Tests build the real model on the meta device and compare.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from peftcalc.model.spec import ModelSpec

Builder = Callable[[Mapping[str, Any], str, str], ModelSpec]

FAMILIES: dict[str, Builder] = {}


def register(*model_types: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        for t in model_types:
            if t in FAMILIES:
                raise RuntimeError(f"family {t!r} registered twice")
            FAMILIES[t] = fn
        return fn

    return wrap


def _load_all() -> None:
    # Imported for their registration side effect.
    from peftcalc.model.families import llama  # noqa: F401
    from peftcalc.model.families import t5  # noqa: F401
    from peftcalc.model.families import bert  # noqa: F401
    from peftcalc.model.families import gpt2  # noqa: F401
    from peftcalc.model.families import gpt_neox  # noqa: F401
    from peftcalc.model.families import opt  # noqa: F401
    from peftcalc.model.families import bloom  # noqa: F401
    from peftcalc.model.families import falcon  # noqa: F401


_load_all()
