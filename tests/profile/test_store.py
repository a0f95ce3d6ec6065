"""Profiles on disk: JSON round trip, the user's cache (XDG_CACHE_HOME), damaged files, regimes, no torch to read."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import pytest

import peftcalc.profile as profiles
from peftcalc.methods import make_method
from peftcalc.model.hf_config import spec_from_config
from peftcalc.profile.store import Profile, Regime, cache_dir, poly_from_json, poly_to_json
from peftcalc.setup import Setup

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)


def fake_profile(batch: str = "2+") -> Profile:
    return Profile(Regime(batch, 0, None, None), {("B", "S"): 7, (): 1}, ({("B", "S"): 9},),
                   ({("B", "S"): 11}, {(): 5}), {(): 3}, "fake")


@pytest.fixture
def tracer(monkeypatch, tmp_path):
    """profile_for with the tracer replaced by a counter (no torch step), the cache in a temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def trace(spec, method, setup, accumulating=False):
        calls.append(setup)
        return fake_profile("1" if setup.batch_size == 1 else "2+")

    import peftcalc.measure.profile as traced
    monkeypatch.setattr(traced, "trace_profile", trace)
    return calls


def lookup(setup: Setup) -> Profile:
    spec = spec_from_config(TINY, "tiny", "test")
    method = make_method("lora")
    return profiles.profile_for(method.adapt(spec), setup, method)


def test_poly_json_round_trip_keeps_rational_coefficients():
    p = {(): 5, ("B", "S"): 3, ("S",): Fraction(7, 16)}
    assert poly_to_json(p) == {"1": 5, "B*S": 3, "S": "7/16"}
    assert poly_from_json(json.loads(json.dumps(poly_to_json(p)))) == p
    prof = fake_profile()
    assert Profile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "peftcalc" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "peftcalc" / "profiles"


def test_the_second_lookup_reads_the_cache(tracer, tmp_path):
    first = lookup(Setup(batch_size=4, seq_len=512))
    again = lookup(Setup(batch_size=8, seq_len=2048))  # same regime
    assert first == again == fake_profile() and len(tracer) == 1
    files = list((tmp_path / "peftcalc" / "profiles").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["parts"]["method"].startswith("Lora(")


def test_another_regime_is_traced_and_kept_beside_the_first(tracer, tmp_path):
    lookup(Setup(batch_size=4))
    lookup(Setup(batch_size=1))
    lookup(Setup(batch_size=1, seq_len=1024))
    lookup(Setup(batch_size=2))
    assert [s.batch_size for s in tracer] == [4, 1]
    (f,) = (tmp_path / "peftcalc" / "profiles").glob("*.json")
    assert [p["regime"]["batch"] for p in json.loads(f.read_text())["profiles"]] == ["2+", "1"]


@pytest.mark.parametrize("damage", ["truncated", "not json", "other format"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tracer, tmp_path, damage):
    lookup(Setup(batch_size=4))
    (f,) = (tmp_path / "peftcalc" / "profiles").glob("*.json")
    text = f.read_text()
    f.write_text({"truncated": text[: len(text) // 2], "not json": "\x00garbage",
                  "other format": json.dumps({**json.loads(text), "format": 999})}[damage])
    assert lookup(Setup(batch_size=4)) == fake_profile()
    assert len(tracer) == 2
    assert json.loads(f.read_text())["format"] == 1


def test_a_different_setup_flag_is_another_profile(tracer):
    lookup(Setup(batch_size=4))
    lookup(Setup(batch_size=4, precision="bf16"))
    lookup(Setup(batch_size=4, gradient_checkpointing=True))
    lookup(Setup(batch_size=4, adamw_impl="fused"))  # the optimizer acts outside forward and backward
    assert len(tracer) == 3


def test_reading_a_cached_profile_needs_no_torch(tracer, tmp_path):
    lookup(Setup(batch_size=4))
    code = ("import sys; import peftcalc.profile as p; from peftcalc.methods import make_method; "
            "from peftcalc.model.hf_config import spec_from_config; from peftcalc.setup import Setup; "
            f"m = make_method('lora'); s = spec_from_config({TINY!r}, 'tiny', 'test'); "
            "p.profile_for(m.adapt(s), Setup(batch_size=4), m); print('torch' in sys.modules)")
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_without_the_measure_extra_a_missing_profile_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(profiles, "library_versions", lambda: {"torch": None, "transformers": "5", "peft": "0.2"})
    from peftcalc.errors import PeftcalcError

    with pytest.raises(PeftcalcError, match="pip install 'peftcalc\\[measure\\]'"):
        lookup(Setup(batch_size=4))
