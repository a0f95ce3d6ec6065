"""The builders by Hugging Face `model_type`: each family module registers its builder here."""

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
