"""The profiles shipped for the catalogue (peftcalc/profile/shipped, written by `python -m peftcalc.profile.ship`):
every catalogue model without a hand replay has its file, covering each default-table method it takes (a profile, or
why its step cannot be traced); a shipped profile equals a new trace of the same step with the installed libraries;
an estimate of a shipped model reads no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftcalc.methods import DEFAULT_TABLE, MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.profile import shipped_path
from peftcalc.profile.key import key_parts
from peftcalc.profile.ship import shipped_models, shipped_setup
from peftcalc.profile.store import Profile, profile_key


def _adapts(spec, name: str) -> bool:
    try:
        make_method(name, MethodOptions()).adapt(spec)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", shipped_models())
def test_every_default_method_is_shipped_or_refused_with_a_reason(name):
    spec = get_model(name)
    data = json.loads(shipped_path(spec).read_text())
    for method in DEFAULT_TABLE:
        if not _adapts(spec, method):
            continue
        m = make_method(method, MethodOptions())
        key = profile_key(key_parts(spec, m, shipped_setup(spec, m)))
        assert (key in data["entries"]) != (key in data["refused"]), (name, method)
        assert key not in data["refused"] or name in data["refused"][key], data["refused"].get(key)


def test_a_shipped_profile_equals_a_new_trace():
    pytest.importorskip("torch")
    from peftcalc.measure.profile import trace_profile

    spec, method = get_model("qwen3-0.6b"), make_method("lora", MethodOptions())
    data = json.loads(shipped_path(spec).read_text())
    setup = shipped_setup(spec, method)
    shipped = Profile.from_dict(data["entries"][profile_key(key_parts(spec, method, setup))]["profiles"][0])
    new = trace_profile(spec, method, setup)
    assert (new.after_forward, new.forward_peaks, new.backward_peaks, new.gradients, new.regime) == \
        (shipped.after_forward, shipped.forward_peaks, shipped.backward_peaks, shipped.gradients, shipped.regime)


@pytest.mark.parametrize("model, refused", [("qwen3-8b", False), ("qwen3-30b-a3b", True)])
def test_an_estimate_of_a_shipped_model_imports_no_torch(model, refused, tmp_path):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom peftcalc.cli import main\n"
            f"r = CliRunner().invoke(main, ['estimate', '--model', '{model}'])\n"
            "print(r.exit_code, 'torch' in sys.modules)\nprint(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}).stdout
    status, torch_imported = out.split("\n", 1)[0].split()
    assert torch_imported == "False", out
    if refused:  # MoE experts in fp32: transformers 5's grouped_mm takes bf16 only; said in one line
        assert status != "0" and "mixture of experts" in out and out.count("\n") <= 3, out
    else:
        assert status == "0" and "traced profiles" in out, out


def test_the_committed_runs_of_shipped_models_are_repredicted_without_tracing(monkeypatch, tmp_path):
    """ship adds the setups of each model's committed measured runs: `peftcalc validate` re-predicts them from the
    package (an empty cache, tracing forbidden), as it did after tracing them (the gate test checks the numbers)."""
    pytest.importorskip("torch")
    from peftcalc.measure import profile as traced
    from peftcalc.results.files import committed_results, read_records
    from peftcalc.results.predict import repredict, request_of

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(traced, "trace_profile", lambda *a, **k: pytest.fail(f"traced {a[0].name} {a[1].name}"))
    shipped = set(shipped_models())
    runs = [r for r in read_records(committed_results()) if request_of(r).model in shipped]
    if not runs:
        pytest.skip("no committed results")
    assert {str(request_of(r).model) for r in runs} >= {"qwen3-0.6b", "qwen3-30b-a3b", "gpt-oss-20b", "qwen3.5-9b"}
    for record in runs:
        assert repredict(record).bytes.peak > 0
