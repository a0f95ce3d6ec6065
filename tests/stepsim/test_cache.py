"""The replay's results on disk (peftcalc/stepsim/cache.py): a result read back equals the replay's, tagged moments
included; every field of the adaptation is in the key; a damaged file is replayed again."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from peftcalc.activations import step_config
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup
from peftcalc.stepsim import cache
from peftcalc.stepsim.replay import simulate

SPEC = get_model("qwen2.5-0.5b")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def _lora(**options):
    return make_method("lora", MethodOptions(**options)).adapt(SPEC)


def test_a_stored_result_reads_back_equal_with_its_tagged_moments():
    a = _lora()
    cfg = step_config(Setup(precision="bf16"), SPEC.arch.family, adaptation=a)
    r = simulate(a, cfg)
    assert r.moments and r.stack_counts  # (what sharded runs read)
    key = cache.replay_key(a, cfg)
    assert cache.load(key) is None
    cache.store(key, r)
    assert cache.load(key) == r


def test_every_adaptation_field_is_in_the_key():
    cfg = step_config(Setup(), SPEC.arch.family)
    plain = _lora()
    keys = {cache.replay_key(a, cfg) for a in (plain, _lora(lora_dropout=0.1), replace(plain, extra_tokens=3),
                                                 replace(plain, saved_keys_exact=True))}
    assert len(keys) == 4


def test_a_damaged_file_is_ignored():
    a = _lora()
    cfg = step_config(Setup(), SPEC.arch.family)
    key = cache.replay_key(a, cfg)
    cache.store(key, simulate(a, cfg))
    path = cache._path(key)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert cache.load(key) is None
