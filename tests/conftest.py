"""Test tiers. `pytest -m "not slow"` is the everyday tier (under 3 minutes on 2 cores); plain `pytest` runs
everything, as CI does.

Slow, marked where they are written: real multi-process runs (torchrun), headless Chromium, regenerating
the committed reports, whole bench suites, and real CPU steps beyond one per kind. Slow by rule, here: a test
parametrized over catalogue models, for every model but the smallest of each hand-written family (those stay fast,
so every family is still checked in the everyday tier; derived architectures at tiny sizes in tests/model)."""

from __future__ import annotations

from functools import lru_cache

import pytest


@lru_cache(maxsize=1)
def fast_models() -> frozenset[str]:
    """The smallest catalogue model of each hand-written family. Catalogue models whose inventory is derived from
    transformers are all slow here: their architectures are checked in the everyday tier at tiny sizes
    (tests/model/test_derived.py, tests/methods/test_peft_derived.py)."""
    from peftcalc.model.catalogue import get_model, model_names

    smallest: dict[str, tuple[int, str]] = {}
    for name in model_names():
        spec = get_model(name)
        if spec.origin == "derived":
            continue
        smallest[spec.family] = min(smallest.get(spec.family, (spec.total_params, name)), (spec.total_params, name))
    return frozenset(name for _, name in smallest.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("name")
        if isinstance(name, str) and item.get_closest_marker("catalogue") is not None and name not in fast_models():
            item.add_marker(pytest.mark.slow)



def pytest_configure(config: pytest.Config) -> None:
    """Derived inventories and adaptations go to a cache of the test session (set before collection, which
    already reads models), never the user's; nothing asks the Hugging Face Hub."""
    import os
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="peftcalc-test-cache-")
    os.environ["HF_HUB_OFFLINE"] = "1"
