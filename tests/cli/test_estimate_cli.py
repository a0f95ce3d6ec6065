"""`peftcalc estimate`, `models`, `methods`: output, the JSON contract, and every kind of bad input."""

from __future__ import annotations

import json
from dataclasses import replace
import subprocess
import sys

import pytest
from click.testing import CliRunner

from peftcalc.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_seed_table():
    r = run("estimate", "--params", "7e9", "--rank", "8")
    assert r.exit_code == 0, r.output
    lines = {l.split("  ")[0]: l for l in r.output.splitlines()}
    assert "28.00 GB" in lines["weights"] and "56.00 GB" in lines["optimizer states"]
    assert "112.00 GB" in lines["= model states (exact)"]
    for method in ("full", "lora", "qlora", "dora", "adapter", "prompt", "prefix", "ia3"):
        assert method in r.output.splitlines()[0]
    assert "16,777,216" in r.output and "65,536" in r.output and "256x fewer" in r.output
    for assumption in ("precision", "optimizer", "batch x sequence", "attention kernel", "gradient checkpointing",
                       "inferred shape", "GB = 1,000,000,000 bytes"):
        assert assumption in r.output


def test_gib_units():
    r = run("estimate", "--params", "7e9", "--method", "full", "--units", "GiB")
    assert r.exit_code == 0
    assert "26.08 GiB" in r.output  # 28e9 / 2**30
    assert "GiB = 1,073,741,824 bytes" in r.output


def test_json_for_one_method():
    r = run("estimate", "--model", "llama-2-7b", "--method", "lora", "--rank", "16", "--targets", "all-linear",
            "--precision", "bf16-mixed", "--seq", "2048", "--batch", "4", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert [x["method"] for x in d["results"]] == ["lora"]
    # all-linear on Llama-2-7B: 32 layers x r(in + out) over q,k,v,o,gate,up,down
    h, f = 4096, 11008
    assert d["results"][0]["trainable_params"] == 32 * 16 * (4 * 2 * h + 3 * (h + f))
    assert d["setup"] == {"precision": "bf16-mixed", "optimizer": "adamw", "batch_size": 4, "seq_len": 2048,
                          "gradient_checkpointing": False, "attention": "sdpa", "num_gpus": 1, "zero_stage": 0,
                          "offload": False, "adamw_impl": "foreach", "gradient_accumulation": 1,
                          "adapter_dtype": "fp32"}


def test_config_path(tmp_path):
    cfg = {"model_type": "mistral", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run("estimate", "--config", str(tmp_path), "--method", "qlora", "--rank", "64", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["model"]["family"] == "mistral"


def test_csv():
    r = run("estimate", "--model", "gpt2", "--csv")
    assert r.exit_code == 0
    rows = r.output.strip().splitlines()
    assert rows[0].startswith("method,trainable_params") and len(rows) == 10


def test_models_and_methods():
    r = run("models")
    assert r.exit_code == 0
    assert "llama-2-7b" in r.output and "6,738,415,616" in r.output
    data = json.loads(run("models", "--json").output)
    assert all(m["source"] for m in data)
    r = run("methods")
    assert r.exit_code == 0 and "Houlsby" in r.output
    assert {m["name"] for m in json.loads(run("methods", "--json").output)} >= {"full", "lora", "qlora", "dora", "adapter",
                                                                               "prompt", "prefix", "ptuning", "ia3"}


@pytest.mark.parametrize("args, message", [
    (["--params", "0"], "--params must be a positive"),
    (["--params", "-5"], "--params must be a positive"),
    (["--params", "abc"], "not a number"),
    (["--params", "7.5"], "not a whole number"),
    (["--params", "7e9", "--batch", "0"], "--batch must be a positive integer"),
    (["--params", "7e9", "--seq", "-1"], "--seq must be a positive integer"),
    (["--params", "7e9", "--rank", "0", "--method", "lora"], "--rank must be a positive integer"),
    (["--params", "7e9", "--rank", "5000", "--method", "lora"], "larger than"),
    (["--params", "7e9", "--virtual-tokens", "0", "--method", "prompt"], "--virtual-tokens must be"),
    (["--params", "7e9", "--bottleneck", "0", "--method", "adapter"], "--bottleneck must be"),
    (["--params", "7e9", "--tasks", "0"], "--tasks must be"),
    (["--model", "llama-2-7", "--method", "lora"], "did you mean"),
    (["--params", "7e9", "--method", "lorax"], "Invalid value for '--method'"),
    (["--params", "7e9", "--optimizer", "adam9"], "Invalid value for '--optimizer'"),
    (["--params", "7e9", "--precision", "fp8"], "Invalid value for '--precision'"),
    (["--params", "7e9", "--model", "gpt2"], "exactly one way"),
    ([], "exactly one way"),
    (["--model", "gpt2", "--hidden", "512"], "already has its shape"),
    (["--params", "7e9", "--json", "--csv"], "exclusive"),
    (["--params", "7e9", "--offload"], "--offload"),
    (["--params", "7e9", "--targets", "q_prj", "--method", "lora"], "not found"),
    (["--params", "7e9", "--hidden", "4001"], "not divisible"),
])
def test_bad_input(args, message):
    r = run("estimate", *args)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_bad_configs(tmp_path):
    missing = run("estimate", "--config", str(tmp_path / "nope.json"))
    assert missing.exit_code != 0 and "not found" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run("estimate", "--config", str(bad))
    assert r.exit_code != 0 and "not valid JSON" in r.output
    unsupported = tmp_path / "u.json"
    unsupported.write_text(json.dumps({"model_type": "mamba"}))
    r = run("estimate", "--config", str(unsupported))
    assert r.exit_code != 0 and "not supported" in r.output and "llama" in r.output
    negative = tmp_path / "n.json"
    negative.write_text(json.dumps({"model_type": "llama", "hidden_size": -3}))
    r = run("estimate", "--config", str(negative))
    assert r.exit_code != 0 and "hidden_size" in r.output
    for r in (missing,):
        assert isinstance(r.exception, SystemExit)


def test_python_dash_m_and_no_heavy_imports():
    code = ("import sys, runpy; sys.argv=['peftcalc','estimate','--params','7e9','--json'];\n"
            "try:\n runpy.run_module('peftcalc', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy=[m for m in ('torch','numpy','pandas','matplotlib','transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert '"total_params": 7000000000' in out
    assert out.strip().endswith("HEAVY []")


def test_bitsandbytes_version_and_kbit_preparation_flags():
    """litgpt's Llama-2-7B QLoRA case (LoRA r=8 on q, v; bf16; 1,304 tokens; no kbit preparation): bitsandbytes
    0.41.1 keeps every 4-bit linear's input. Per layer the attention input (q, k, v share it), the MLP input (gate
    and up share it) and down_proj's input, bf16; layer 0's attention input needs no gradient; o_proj's input is
    sdpa's output, saved anyway: tokens x 2 x (L (2H + I) - H) bytes more after forward."""
    from peftcalc.estimate import estimate_method
    from peftcalc.methods import MethodOptions, make_method
    from peftcalc.model.catalogue import get_model
    from peftcalc.setup import Setup

    spec = get_model("llama-2-7b")
    method = make_method("qlora", MethodOptions(targets=("q_proj", "v_proj")))
    setup = Setup(precision="bf16", seq_len=1304, kbit_preparation=False)
    old = estimate_method(spec, method, replace(setup, bitsandbytes_version="0.41.1")).memory
    new = estimate_method(spec, method, setup).memory
    a = spec.arch
    assert old.activation_bytes - new.activation_bytes == 1304 * 2 * (a.num_layers * (2 * a.hidden_size + a.ffn_size)
                                                                     - a.hidden_size)
    args = ("estimate", "--model", "llama-2-7b", "--method", "qlora", "--targets", "q_proj,v_proj", "--precision",
            "bf16", "--seq", "1304", "--no-kbit-preparation")
    r_old, r_new = run(*args, "--bitsandbytes-version", "0.41.1", "--json"), run(*args, "--json")
    assert r_old.exit_code == 0 and r_new.exit_code == 0, r_old.output
    peak = lambda r: json.loads(r.stdout)["results"][0]["memory_bytes"]["peak"]  # noqa: E731
    assert peak(r_old) - peak(r_new) == old.peak_bytes - new.peak_bytes > 1.5e9
    assert "keeps the input of every 4-bit linear" in run(*args, "--bitsandbytes-version", "0.41.1").output


def test_kbit_preparation_is_on_by_default_and_says_so():
    r = run("estimate", "--model", "llama-2-7b", "--method", "qlora", "--precision", "bf16")
    assert r.exit_code == 0 and "prepare_model_for_kbit_training" in r.output
    off = run("estimate", "--model", "llama-2-7b", "--method", "qlora", "--precision", "bf16",
              "--no-kbit-preparation")
    assert "prepare_model_for_kbit_training (" not in off.output


@pytest.mark.parametrize("version", ["latest", "0.38.0", "1.2.3.4"])
def test_a_bad_bitsandbytes_version_is_one_line(version):
    r = run("estimate", "--params", "7e9", "--method", "qlora", "--bitsandbytes-version", version)
    assert r.exit_code == 1 and "--bitsandbytes-version" in r.output and r.output.count("\n") == 1
