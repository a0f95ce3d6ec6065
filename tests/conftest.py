"""Test tiers. `pytest -m "not slow"` is the everyday tier (under 3 minutes on 2 cores); plain `pytest` runs
everything, as CI does. Both run on one pytest-xdist worker per core (pyproject.toml's addopts; `-n 0` runs in one
process, for a debugger).

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
    already reads models), never the user's, and shared by the workers of a parallel run (they inherit it: what one
    has traced the others read; every cache write is atomic); nothing asks the Hugging Face Hub."""
    import os
    import tempfile

    if "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="peftcalc-test-cache-")
    os.environ["HF_HUB_OFFLINE"] = "1"
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # the cores shared out: OpenMP threads spinning between kernels would take another worker's core
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads  # (before torch is imported)
