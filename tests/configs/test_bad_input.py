"""Bad config input: a one-line error that names the file (and the field or the place), exit status 2, no
traceback, nothing written. Each case is a file a user could really have."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main

AXOLOTL = "base_model: NousResearch/Meta-Llama-3-8B\nadapter: qlora\nload_in_4bit: true\nsequence_len: 1024\n"
CASES = {
    # name: (file name, contents, words the message must hold)
    "malformed YAML": ("bad.yml", "base_model: x\nadapter: [lora\n", ["malformed YAML", "line"]),
    "malformed JSON": ("adapter_config.json", '{"peft_type": "LORA", "r": 8,,}', ["malformed JSON", "line 1"]),
    "two YAML documents": ("two.yml", "base_model: a\n---\nbase_model: b\n", ["several YAML documents"]),
    "a key twice": ("twice.yml", AXOLOTL + "sequence_len: 2048\n", ["sequence_len", "appears twice", "line 4"]),
    "a list, not a mapping": ("list.json", "[1, 2]", ["a list, not a mapping"]),
    "empty": ("empty.yml", "", ["empty"]),
    "plain text": ("notes.md", "# my notes\nnothing here\n", ["not a mapping"]),
    "not a config": ("other.yml", "name: my-project\nversion: 3\n", ["not a training config"]),
    "a model's config.json": ("config.json", '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}',
                              ["a model's config.json", "--config"]),
    "axolotl 4- and 8-bit": ("a.yml", AXOLOTL + "load_in_8bit: true\n", ["load_in_4bit", "load_in_8bit"]),
    "axolotl qlora without 4-bit": ("a.yml", "base_model: m/x\nadapter: qlora\n", ["adapter", "load_in_4bit"]),
    "axolotl 4-bit without adapter": ("a.yml", "base_model: m/x\nload_in_4bit: true\n", ["load_in_4bit", "adapter"]),
    "axolotl batch_size and accumulation": ("a.yml", AXOLOTL + "batch_size: 8\ngradient_accumulation_steps: 2\n",
                                            ["batch_size", "gradient_accumulation_steps"]),
    "axolotl two cross-entropy kernels": ("a.yml", AXOLOTL + "plugins:\n- axolotl.integrations.liger.LigerPlugin\n"
                                          "liger_fused_linear_cross_entropy: true\nchunked_cross_entropy: true\n",
                                          ["chunked_cross_entropy", "liger_fused_linear_cross_entropy"]),
    "TRL 4- and 8-bit": ("sft.yaml", "model_name_or_path: m/x\nuse_peft: true\nload_in_4bit: true\nload_in_8bit: "
                         "true\n", ["load_in_4bit", "8 bit and 4 bit"]),
    "TRL bf16 and fp16": ("sft.yaml", "model_name_or_path: m/x\nbf16: true\nfp16: true\n", ["bf16", "fp16"]),
    "TRL quantized without peft": ("sft.yaml", "model_name_or_path: m/x\nload_in_4bit: true\n",
                                   ["load_in_4bit", "use_peft"]),
    "TRL liger with chunked_nll": ("sft.yaml", "model_name_or_path: m/x\nuse_liger_kernel: true\nloss_type: "
                                   "chunked_nll\n", ["loss_type", "use_liger_kernel"]),
    "LLaMA-Factory quantized full": ("lf.yaml", "model_name_or_path: m/x\nstage: sft\nfinetuning_type: full\n"
                                     "quantization_bit: 4\n", ["quantization_bit", "lora or oft"]),
    "torchtune fp16": ("tt.yaml", "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n  "
                       "lora_attn_modules: [q_proj]\ndtype: fp16\n", ["dtype", "fp16"]),
    "torchtune packed without a length": ("tt.yaml", "model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\n"
                                          "dtype: bf16\ndataset:\n  packed: True\n", ["dataset.packed",
                                                                                     "max_seq_len"]),
    "DeepSpeed offload_param below stage 3": ("ds.json", '{"zero_optimization": {"stage": 2, "offload_param": '
                                              '{"device": "cpu"}}}', ["offload_param", "stage 3"]),
}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_bad_config_is_one_line_exit_2(case, command, tmp_path):
    name, text, words = CASES[case]
    path = tmp_path / name
    path.write_text(text)
    before = sorted(tmp_path.iterdir())
    extra = ["--gpu", "a100-80gb"] if command == "plan" else []
    r = run(command, "--from", str(path), "--model", "qwen2.5-0.5b", *extra)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert str(path) in r.output, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_a_missing_file_and_a_folder(tmp_path):
    for target, words in ((tmp_path / "nope.yml", "no such file"), (tmp_path, "a folder")):
        r = run("estimate", "--from", str(target), "--model", "gpt2")
        assert r.exit_code == 2 and words in r.output and r.output.count("\n") == 1, r.output


def test_a_binary_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x89\xff\xfe\x00" * 64)
    r = run("estimate", "--from", str(path), "--model", "gpt2")
    assert r.exit_code == 2 and "not a text file" in r.output and str(path) in r.output


def test_an_unknown_kind_is_a_usage_error(tmp_path):
    path = tmp_path / "a.yml"
    path.write_text(AXOLOTL)
    r = run("estimate", "--from", str(path), "--from-kind", "megatron")
    assert r.exit_code == 2 and "megatron" in r.output and "Traceback" not in r.output
    from peftcalc.configs import read_config
    from peftcalc.errors import InputError

    with pytest.raises(InputError, match="not a kind peftcalc reads"):
        read_config(path, "megatron")


def test_from_kind_without_from():
    r = run("estimate", "--model", "gpt2", "--from-kind", "axolotl")
    assert r.exit_code != 0 and "--from FILE" in r.output


def test_the_wrong_kind_reports_fields_as_not_understood(tmp_path):
    """Told a TRL file is axolotl, the reader finds no base_model: a clear error, not a silent guess."""
    path = tmp_path / "sft.yaml"
    path.write_text("model_name_or_path: m/x\nper_device_train_batch_size: 2\n")
    r = run("estimate", "--from", str(path), "--from-kind", "axolotl", "--model", "gpt2")
    assert r.exit_code == 2 and "base_model" in r.output


def test_an_adapter_for_another_model(tmp_path):
    path = Path(__file__).resolve().parents[1] / "data" / "configs" / "peft" / \
        "prompt-tuning-llama3.2-3B.adapter_config.json"
    r = run("estimate", "--from", str(path), "--model", "qwen2.5-0.5b")
    assert r.exit_code == 2 and "token_dim: 3072 does not match qwen2.5-0.5b" in r.output, r.output
