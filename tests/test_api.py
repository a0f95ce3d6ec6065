"""The Python API: `peftcalc.estimate`, `peftcalc.plan`, `peftcalc.from_file` return the typed results the CLI
prints (same numbers as --json), `import peftcalc` imports nothing heavy, and `peftcalc.estimate` stays callable
however the submodule of the same name was imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import peftcalc
from peftcalc.cli import main
from peftcalc.configs import Status, TrainingConfig
from peftcalc.errors import PeftcalcError
from peftcalc.render.results import EstimateResult, PlanResult

QLORA = Path(__file__).resolve().parent / "data" / "configs" / "axolotl" / "llama3-8b-qlora.yml"


def cli_json(*args: str) -> dict:
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_estimate_equals_the_cli():
    r = peftcalc.estimate(model="llama-3-8b", method="lora", rank=16, targets=["q_proj", "v_proj"], seq=2048,
                          gradient_checkpointing=True)
    # LoRA's r(m+n) on q_proj (4096 x 4096) and v_proj (1024 x 4096, grouped-query) in 32 layers
    assert isinstance(r, EstimateResult) and r.method("lora").params.trainable == 32 * 16 * ((4096 + 4096) +
                                                                                           (4096 + 1024))
    assert r.to_dict() == cli_json("estimate", "--model", "llama-3-8b", "--method", "lora", "--rank", "16",
                                   "--targets", "q_proj,v_proj", "--seq", "2048", "--gradient-checkpointing")
    assert "Assumptions" in r.text() and str(r) == r.text()


def test_from_file_and_overrides():
    cfg = peftcalc.from_file(QLORA)
    assert isinstance(cfg, TrainingConfig) and cfg.kind == "axolotl" and cfg.settings.method == "qlora"
    assert any(u.status is Status.NOT_MODELLED for u in cfg.fields)
    r = peftcalc.estimate(cfg, batch=1)
    assert r.estimate.setup.batch_size == 1 and r.files is not None
    assert r.to_dict() == cli_json("estimate", "--from", str(QLORA), "--batch", "1")
    assert peftcalc.estimate(str(QLORA), batch=1).to_dict() == r.to_dict()


def test_plan_equals_the_cli_and_does_not_raise_when_nothing_fits():
    p = peftcalc.plan(QLORA, gpu=["a100-80gb", "rtx-4090"], tokens=20e6)
    assert isinstance(p, PlanResult)
    assert p.to_dict() == cli_json("plan", "--from", str(QLORA), "--gpu", "a100-80gb", "--gpu", "rtx-4090",
                                   "--tokens", "20000000")
    none = peftcalc.plan(model="llama-2-70b", method="full", gpu="t4", max_gpus=1)
    assert not any(o.runs for o in none.options)


def test_bad_options_are_peftcalc_errors():
    with pytest.raises(PeftcalcError, match="unknown option 'ranks'"):
        peftcalc.estimate(model="gpt2", ranks=8)
    with pytest.raises(PeftcalcError, match="--batch"):
        peftcalc.estimate(model="gpt2", batch="many")
    with pytest.raises(PeftcalcError, match="no such file"):
        peftcalc.from_file("/nonexistent.yml")


@pytest.mark.parametrize("code", [
    "import peftcalc; r = peftcalc.estimate(params=7e9, method='lora'); print(type(r).__name__)",
    "import peftcalc.estimate as m; import peftcalc; print(type(peftcalc.estimate(params=7e9)).__name__, "
    "callable(m.estimate_method))",
    "from peftcalc.estimate import estimate_method; import peftcalc; print(type(peftcalc.estimate(params=7e9))."
    "__name__)",
])
def test_estimate_is_callable_whatever_was_imported_first(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("EstimateResult")


def test_import_is_light():
    code = ("import sys, peftcalc; heavy = [m for m in ('torch', 'numpy', 'pandas', 'yaml', 'click', "
            "'peftcalc.estimate') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
