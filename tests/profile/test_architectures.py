"""The analytic peak of every decoder architecture of tests/data/tiny_architectures.json (transformers' own config
classes at tiny sizes, the list the inventory tests use) within 2 % of the traced step, for full fine-tuning and
LoRA: the estimate's peak (model states from the inventory, activations from the hand replay where a family has
one, else from a traced profile) against `peftcalc measure --backend trace`'s.

Every model is given 6 layers (per-layer lists repeated), so a profile, traced on 3-4 of them, is extrapolated;
the compared step is at batch 4 and a sequence length off the profile's grid (its batches are 2 and 3). The
profiles are traced into a temporary cache. One architecture runs in the fast tier, the rest in the slow one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.estimate import estimate_method
from peftcalc.measure.api import measure
from peftcalc.measure.profile import supports_sdpa
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.hf_config import spec_from_config
from peftcalc.profile.layout import LAYER_COUNT_KEYS
from peftcalc.setup import Setup

DATA = Path(__file__).parents[1] / "data" / "tiny_architectures.json"
ARCHS: dict[str, dict[str, Any]] = {k: v for k, v in json.loads(DATA.read_text()).items()
                                    if not k.startswith("_") and k not in ("t5", "bart")}  # decoders only
LAYERS = 6
FAST = {"qwen3"}  # one in the fast tier (derived inventory, qk-norm); every other architecture in the slow one
SETUP = Setup(precision="bf16", batch_size=4, seq_len=333)  # bf16: transformers' grouped MoE kernels need it


def with_layers(cfg: dict[str, Any], n: int) -> dict[str, Any]:
    """The config with n layers: the count set, per-layer lists and patterns repeated to length n."""
    out = json.loads(json.dumps(cfg))
    inner = out.get("text_config", out) if "text_config" in out else out
    old = next((inner[k] for k in LAYER_COUNT_KEYS if isinstance(inner.get(k), int)), None)
    for k in LAYER_COUNT_KEYS:
        if isinstance(inner.get(k), int):
            inner[k] = n
    for k, v in list(inner.items()):
        per_layer = isinstance(v, list) and any(w in k for w in ("layer", "block")) or isinstance(v, str) and "pattern" in k
        if per_layer and old and len(v) == old and old > 1:
            inner[k] = (v * n)[:n]
    return out


# Architectures whose profile cannot be built yet, each refused in one line (the README lists them):
NOT_YET = {
    "jamba": "its per-layer types (attention/Mamba period, experts period) change when layers are left out",
    "llama4_text": "its interleaved MoE and no-RoPE layers change when layers are left out",
    "qwen2_5_vl": "a multimodal config: the layer count lives in the nested text_config",
}


def case(arch: str, method: str):
    marks = [] if arch in FAST else [pytest.mark.slow]
    if arch in NOT_YET:
        marks.append(pytest.mark.xfail(strict=True, raises=PeftcalcError, reason=NOT_YET[arch]))
    return pytest.param(arch, method, marks=marks, id=f"{arch}-{method}")


@pytest.mark.parametrize("arch,method", [case(a, m) for a in sorted(ARCHS) for m in ("full", "lora")])
def test_analytic_peak_within_2_percent_of_the_traced_step(arch, method, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = spec_from_config(with_layers(ARCHS[arch], LAYERS), f"tiny-{arch}-{LAYERS}", str(DATA))
    m = make_method(method, MethodOptions())
    setup = SETUP if supports_sdpa(spec) else replace(SETUP, attention="eager")  # (gpt-oss, Gemma 2: eager only)
    est = estimate_method(spec, m, setup, device="cpu")  # first: a refused profile needs no measured step
    r = measure(spec, m, setup, save_checkpoint=False)
    assert r.status == "ok", r.detail.error
    got, want = est.memory.peak_bytes, r.measured.peak
    assert abs(got - want) <= 0.02 * want, (arch, method, got, want, est.activations.source)
