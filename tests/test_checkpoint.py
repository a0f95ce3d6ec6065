"""Checkpoint bytes against files really written by peft's save_pretrained (safetensors)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from peftcalc.measure.hf_model import build_model  # noqa: E402
from peftcalc.methods import MethodOptions, make_method  # noqa: E402
from peftcalc.model.hf_config import spec_from_config  # noqa: E402
from peftcalc.precision import get_precision  # noqa: E402
from peftcalc.checkpoint import checkpoint_bytes  # noqa: E402

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=128)


@pytest.mark.parametrize("method, config", [
    ("lora", lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
    ("dora", lambda: peft.LoraConfig(r=4, use_dora=True, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
    ("ia3", lambda: peft.IA3Config(task_type="CAUSAL_LM")),
    ("prompt", lambda: peft.PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM")),
    ("prefix", lambda: peft.PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM")),
])
def test_adapter_checkpoint_bytes_match_save_pretrained(tmp_path, method, config):
    spec = spec_from_config(TINY, "tiny", "test")
    model = build_model(spec, device="cpu")
    peft.get_peft_model(model, config()).save_pretrained(tmp_path)
    on_disk = os.path.getsize(tmp_path / "adapter_model.safetensors")
    opts = MethodOptions(rank=4, targets=("q_proj", "v_proj") if method in ("lora", "dora") else None)
    predicted = checkpoint_bytes(make_method(method, opts).adapt(spec), get_precision("fp32"))
    assert predicted == on_disk
