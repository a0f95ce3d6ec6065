"""How files and flags combine: flags given on the command line win, later files over earlier ones, launchers
after training configs, the framework defaults a file leaves unsaid; and the table of values the estimate does
not model yet is checked against the estimate itself."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.configs.modelled import FALLBACKS
from peftcalc.estimate import estimate_method
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup

DATA = Path(__file__).resolve().parents[1] / "data" / "configs"
QLORA = str(DATA / "axolotl" / "llama3-8b-qlora.yml")


def estimate_json(*args: str) -> dict:
    r = CliRunner().invoke(main, ["estimate", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def fields(d: dict) -> dict[str, dict]:
    return {u["field"]: u for c in d["from"]["files"] for u in c["fields"]}


def test_flags_given_override_the_file_and_say_so():
    got = estimate_json("--from", QLORA, "--batch", "1", "--rank", "8", "--model", "llama-3-8b")
    assert got["setup"]["batch_size"] == 1 and got["setup"]["seq_len"] == 4096
    want = estimate_json("--model", "llama-3-8b", "--method", "qlora", "--quant-storage", "bf16", "--rank", "8",
                         "--targets", "all-linear", "--precision", "bf16", "--optimizer", "adamw", "--adamw-impl",
                         "fused", "--batch", "1",
                         "--gradient-accumulation", "4", "--seq", "4096", "--gradient-checkpointing")
    assert got["results"] == want["results"]
    f = fields(got)
    assert "overridden by --batch on the command line" in f["micro_batch_size"]["detail"]
    assert "overridden by --rank on the command line" in f["lora_r"]["detail"]
    assert "overridden by --model on the command line" in f["base_model"]["detail"]
    assert "overridden" not in f["sequence_len"]["detail"]


def test_a_flag_at_its_default_is_not_given():
    """--batch defaults to 1; not writing it leaves the file's micro_batch_size (2)."""
    assert estimate_json("--from", QLORA)["setup"]["batch_size"] == 2


def test_later_files_override_earlier_ones_and_launchers_come_last(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nper_device_train_batch_size: 2\nmax_length: 256\n")
    b.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nper_device_train_batch_size: 3\n")
    got = estimate_json("--from", str(a), "--from", str(b))
    assert got["setup"]["batch_size"] == 3 and got["setup"]["seq_len"] == 1024  # b's TRL default max_length
    assert "overridden by " + str(b) in fields(got)["per_device_train_batch_size"]["detail"] or any(
        "overridden by " + str(b) in u["detail"] for c in got["from"]["files"] for u in c["fields"])
    launcher = str(DATA / "trl" / "accelerate-deepspeed-zero3.yaml")
    train = str(DATA / "trl" / "alignment-handbook-zephyr-7b-sft-full.yaml")
    first = estimate_json("--from", launcher, "--from", train)
    assert first["setup"]["zero_stage"] == 3 and first["setup"]["precision"] == "bf16-mixed"
    assert first["setup"]["num_gpus"] == 8


def test_framework_defaults_are_reported(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_name: x/y\n")
    got = estimate_json("--from", str(path))
    f = fields(got)
    assert f["(per_device_train_batch_size)"]["status"] == "default" and got["setup"]["batch_size"] == 8
    assert f["(gradient_checkpointing)"]["status"] == "default" and got["setup"]["gradient_checkpointing"]
    assert f["(dtype)"]["value"] == "float32" and got["setup"]["precision"] == "amp-bf16"
    assert f["dataset_name"]["status"] == "ignored"


def test_unknown_fields_are_reported_not_dropped(tmp_path):
    path = tmp_path / "a.yml"
    path.write_text("base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\nlora_r: 4\nmy_own_knob: 3\n")
    got = estimate_json("--from", str(path))
    assert fields(got)["my_own_knob"]["status"] == "not understood"
    text = CliRunner().invoke(main, ["estimate", "--from", str(path)]).output
    assert "not understood" in text and "my_own_knob" in text


def test_plan_takes_the_file_and_steps(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--from", QLORA, "--gpu", "a100-80gb", "--steps", "100", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["training"]["tokens_per_step"] == 2 * 4096 * 4 and d["training"]["tokens"] == 100 * 2 * 4096 * 4
    assert d["from"]["files"][0]["kind"] == "axolotl"
    assert {o["method"] for o in d["options"]} == {"qlora"}


SETUP_FIELD = {"tp": "tensor_parallel"}
TRIES = {"attention": ("flash_attention_2", "flex_attention"), "loss": ("chunked", "fused"), "packing": (True,),
         "reentrant_checkpointing": (True,), "kbit_preparation": (False,), "optimizer_state_dtype": ("fp32", "bf16"),
         "offload_params": (True,), "tp": (2,), "quant_type": ("fp4",), "double_quant": (False,),
         "quant_storage": ("bf16",), "lora_dropout": (0.05,), "padded": (True,)}


@pytest.mark.parametrize("fallback", FALLBACKS, ids=lambda f: f.setting)
def test_what_the_fallback_table_says_is_not_modelled_changes_nothing(fallback):
    """Each value the table says the estimate ignores really is ignored; when a behaviour lands, this fails and
    its line in configs/modelled.py goes."""
    spec = get_model("qwen2.5-0.5b")
    field = SETUP_FIELD.get(fallback.setting, fallback.setting)
    base = Setup(precision="bf16", batch_size=2, seq_len=256, gradient_checkpointing=True, zero_stage=3, num_gpus=2)
    in_setup, in_options = hasattr(base, field), hasattr(MethodOptions(), field)
    if not in_setup and not in_options:
        return  # neither the setup nor the method options has it yet: nothing in the estimate can read it
    for method in ("full", "lora", "qlora"):
        for value in TRIES[fallback.setting]:
            try:
                setup, options = (replace(base, **{field: value}), MethodOptions()) if in_setup else \
                    (base, MethodOptions(**{field: value}))
            except Exception as e:  # a value the Setup refuses cannot be asked for
                pytest.fail(f"{field}={value!r}: {e}")
            if fallback.instead is None:
                plain_setup, plain_options = base, MethodOptions()
            else:
                plain_setup, plain_options = (replace(base, **{field: fallback.instead}), MethodOptions()) \
                    if in_setup else (base, MethodOptions(**{field: fallback.instead}))
            assert estimate_method(spec, make_method(method, options), setup).memory == \
                estimate_method(spec, make_method(method, plain_options), plain_setup).memory, (method, field, value)
