"""Where derived inventories come from: shipped with the package (catalogue models answer with click alone), the
user's cache under XDG_CACHE_HOME keyed by config and transformers version (the second estimate of an uncatalogued
model imports no torch), derived now; Hugging Face ids through the catalogue, the local HF cache, else a one-line
error; the dtypes transformers' from_pretrained really gives (keep-in-fp32 modules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftcalc.model.catalogue import entry, model_names
from peftcalc.model.derived import SHIPPED_DIR, cache_dir, shipped_path
from peftcalc.model.families import FAMILIES
from peftcalc.model.inventory import config_sha256, inventory_key

ROOT = Path(__file__).resolve().parents[2]
TINY = json.loads((ROOT / "tests" / "data" / "tiny_architectures.json").read_text())

# Run peftcalc in a fresh interpreter where torch, transformers and peft cannot be imported (click alone).
NO_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'numpy', 'pandas', 'matplotlib'):
            raise ImportError(f'No module named {name!r}', name=name)
sys.meta_path.insert(0, Block())
from peftcalc.cli import main
main(sys.argv[1:])
"""


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env, timeout=120)


def test_catalogue_models_without_a_family_answer_with_click_alone() -> None:
    r = run_without_torch("models", "--model", "qwen3-8b", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total_params"] == 8_190_735_360 and out["origin"] == "derived"  # transformers' count (CHECKS.md)
    r = run_without_torch("models", "--model", "Qwen/Qwen3-30B-A3B")  # by its Hugging Face id
    assert r.returncode == 0 and "30,532,122,624 parameters" in r.stdout


def test_every_derived_catalogue_entry_ships_its_inventories() -> None:
    for name in model_names():
        cfg = entry(name)["config"]
        if cfg["model_type"] in FAMILIES:
            continue
        text = json.loads(shipped_path(name, "text").read_text())
        assert text["config_sha256"] == config_sha256(cfg)
        assert shipped_path(name, "full").is_file() == text["multimodal"]


def test_the_second_estimate_of_an_uncatalogued_model_needs_no_torch(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # empty: nothing derived yet
    cfg = TINY["olmo2"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    refused = run_without_torch("models", "--config", str(path))
    assert refused.returncode == 1 and "pip install 'peftcalc[measure]'" in refused.stderr
    assert refused.stderr.count("\n") == 1
    from peftcalc.model.hf_config import load_config

    spec = load_config(path)  # derives (torch) and caches
    cached = cache_dir() / "inventories" / f"{spec.derivation.key}.json"
    assert cached.is_file() and spec.derivation.key == inventory_key(config_sha256(cfg), "text",
                                                                      spec.derivation.transformers_version)
    again = run_without_torch("models", "--config", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total_params"] == spec.total_params


def test_multimodal_scope(tmp_path: Path) -> None:
    cfg = TINY["gemma3"]
    from peftcalc.model.hf_config import spec_from_config

    text, full = spec_from_config(cfg, "g", "t"), spec_from_config(cfg, "g", "t", "full")
    assert text.derivation.scope == "text" and full.derivation.scope == "full" and text.derivation.multimodal
    assert full.total_params > text.total_params
    assert [p for p, _ in text.layer_prefixes()] == ["model.layers.{i}"]  # Gemma3ForCausalLM's names
    assert "model.language_model.layers.{i}" in {p for p, _ in full.layer_prefixes()}
    assert any("vision" in p for p, _ in full.layer_prefixes())


def fake_hub_cache(root: Path, repo: str, cfg: dict) -> None:
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(cfg))
    (root / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")


def test_hugging_face_ids_from_the_local_cache_else_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from peftcalc.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(tmp_path, "someone/tiny-llama", TINY["llama"])
    r = CliRunner().invoke(main, ["models", "--model", "someone/tiny-llama", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["name"] == "someone/tiny-llama"
    missing = CliRunner().invoke(main, ["estimate", "--model", "someone/not-cached"])
    assert missing.exit_code == 1 and "pass --config PATH" in missing.output and "HF_HUB_OFFLINE" in missing.output
    assert missing.output.count("\n") == 1


@pytest.mark.slow
def test_shipped_inventories_regenerate_byte_for_byte() -> None:
    from peftcalc.measure.inventories import catalogue_inventories

    files = catalogue_inventories()
    assert set(files) == {p.name for p in SHIPPED_DIR.glob("*.json")}
    for name, text in files.items():
        assert (SHIPPED_DIR / name).read_text(encoding="utf-8") == text, name


@pytest.mark.parametrize("arch,dtype,expect_fp32", [
    ("gpt_oss", "float16", {"model.norm.weight", "model.layers.0.input_layernorm.weight"}),  # _keep_in_fp32_modules
    ("deepseek_v3", "bfloat16", {"model.layers.1.mlp.gate.weight"}),  # _keep_in_fp32_modules_strict
])
def test_dtype_rules_are_what_from_pretrained_loads(tmp_path: Path, arch: str, dtype: str,
                                                    expect_fp32: set[str]) -> None:
    """Save a tiny checkpoint, load it with from_pretrained in half precision, and compare every tensor's dtype with
    the inventory's rule."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftcalc.model.hf_config import spec_from_config
    from peftcalc.model.spec import expand_name, resolve_dtype

    cfg = dict(TINY[arch])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=getattr(torch, dtype))
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    spec = spec_from_config(TINY[arch], arch, "t")
    rules = {n: resolve_dtype(t.dtype, short, short) for t in (*spec.others, *spec.buffers)
             for n in expand_name(t.name, t.layers, t.count)}
    rules |= {n + ".weight": resolve_dtype(l.dtype, short, short) for l in spec.linears if not l.tied
              for n in expand_name(l.name, l.layers, l.count)}
    names = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.int64": "int64"}
    real = {n: names[str(t.dtype)] for n, t in [*loaded.named_parameters(), *loaded.named_buffers()] if n in rules}
    assert real == {n: rules[n] for n in real}
    assert expect_fp32 <= {n for n, d in real.items() if d == "fp32"}
