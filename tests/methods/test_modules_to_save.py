"""modules_to_save (trainable full copies beside an adapter) against peft: parameter counts on the real model of
every catalogue family, the adapter checkpoint's bytes against peft's state dict as safetensors writes it, and
the step's peak against the traced step of the same model with peft applied."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peftcalc.errors import PeftcalcError
from peftcalc.measure.checkpoint_file import saved_state_dict, state_dict_file_bytes
from peftcalc.measure.hf_model import build_model
from peftcalc.measure.peft_config import peft_config
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.precision import get_precision
from peftcalc.checkpoint import checkpoint_bytes

# (model, modules): the embedding and the head, tied and untied, and a norm and a whole attention block
CASES = [
    ("qwen2.5-0.5b", ("embed_tokens", "lm_head")),  # tied head: the copies untie it
    ("qwen2.5-0.5b", ("lm_head",)),
    ("qwen2.5-0.5b", ("model.norm",)),
    ("gpt2", ("wte", "lm_head")),
    ("opt-350m", ("lm_head", "project_out")),  # embeddings 512 wide, hidden 1024: the head is (V, 512)
    ("bloom-560m", ("word_embeddings",)),
    ("falcon-7b", ("lm_head",)),
    ("llama-3-8b", ("embed_tokens", "lm_head")),  # untied
    ("mistral-7b", ("model.norm", "embed_tokens")),
]
LORA_ONLY = [("qwen2.5-0.5b", ("mlp",))]  # a parent module: every MLP projection (IA3 adapts down_proj in it)


def peft_model(name: str, method: str, modules: tuple[str, ...]):
    spec = get_model(name)
    ours = make_method(method, MethodOptions(modules_to_save=modules))
    model = build_model(spec)
    with torch.device("meta"):
        return spec, ours, get_peft_model(model, peft_config(ours, spec))


SLOW = ("falcon-7b", "llama-3-8b", "mistral-7b")  # building 7-8B models on the meta device takes seconds each


@pytest.mark.parametrize("name,modules,method", [
    pytest.param(n, m, x, marks=pytest.mark.slow if n in SLOW else ())
    for n, m in CASES for x in ("lora", "ia3")] + [(n, m, "lora") for n, m in LORA_ONLY])
def test_counts_equal_peft(name, modules, method):
    spec, ours, pm = peft_model(name, method, modules)
    adaptation = ours.adapt(spec)
    assert (adaptation.params.trainable, adaptation.params.total) == pm.get_nb_trainable_parameters()


@pytest.mark.parametrize("name,modules", CASES[:5], ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_checkpoint_bytes_equal_peft_state_dict(name, modules):
    """peft saves each copy under the original parameter's name; bytes as safetensors writes them (the dtype-
    then-name order of the header), in the model dtype for the copies and fp32 for the adapters."""
    spec = get_model(name)
    ours = make_method("lora", MethodOptions(modules_to_save=modules))
    model = build_model(spec, dtype=torch.bfloat16)
    with torch.device("meta"):
        pm = get_peft_model(model, peft_config(ours, spec))
    state = saved_state_dict(pm)
    assert all(k.startswith("base_model.model.") for k in state)
    assert checkpoint_bytes(ours.adapt(spec), get_precision("bf16")) == state_dict_file_bytes(pm)


def test_copies_keep_the_module_dtype_adapters_fp32():
    spec, ours, pm = peft_model("qwen2.5-0.5b", "lora", ("lm_head",))
    dtypes = {n: p.dtype for n, p in pm.named_parameters() if p.requires_grad}
    assert {d for n, d in dtypes.items() if "modules_to_save" in n} == {next(iter(build_model(spec).parameters())).dtype}
    tensors = {g.name: g for g in ours.adapt(spec).tensors}
    assert not tensors["lm_head.modules_to_save.default.weight"].added  # stored in the model dtype


def test_bad_modules_to_save():
    spec = get_model("qwen2.5-0.5b")
    with pytest.raises(PeftcalcError, match="no module of qwen2.5-0.5b ends with it"):
        make_method("lora", MethodOptions(modules_to_save=("classifier",))).adapt(spec)
    with pytest.raises(PeftcalcError, match="both adapted and in --modules-to-save"):
        make_method("lora", MethodOptions(targets=("q_proj",), modules_to_save=("q_proj",))).adapt(spec)
    with pytest.raises(PeftcalcError, match="quantized"):
        make_method("qlora", MethodOptions(targets=("q_proj",), modules_to_save=("down_proj",))).adapt(spec)
    with pytest.raises(PeftcalcError, match="holds modules the method adapts"):  # peft would leave them unadapted
        make_method("lora", MethodOptions(modules_to_save=("self_attn",))).adapt(spec)
    with pytest.raises(PeftcalcError, match="and, inside it"):
        make_method("lora", MethodOptions(targets=("q_proj",), modules_to_save=("mlp", "down_proj"))).adapt(spec)
    full = make_method("full", MethodOptions(modules_to_save=("lm_head",))).adapt(spec)
    assert full.params == make_method("full").adapt(spec).params  # full fine-tuning trains them already


@pytest.mark.parametrize("name,modules,accumulation", [
    ("gpt2", ("wte", "lm_head"), 1), ("gpt2", ("wte",), 1),
    pytest.param("gpt2", ("lm_head",), 2, marks=pytest.mark.slow),
    pytest.param("qwen2.5-0.5b", ("embed_tokens", "lm_head"), 2, marks=pytest.mark.slow),
    pytest.param("qwen2.5-0.5b", ("embed_tokens",), 1, marks=pytest.mark.slow)])
def test_peak_equals_the_traced_step(name, modules, accumulation):
    """The replayed step with the copies trainable (the tied head untied) against peft's step traced on fake
    tensors, to the byte, per phase."""
    from peftcalc.measure.api import measure
    from peftcalc.setup import Setup

    setup = Setup(precision="bf16", batch_size=2, seq_len=128, gradient_accumulation=accumulation)
    r = measure(get_model(name), make_method("lora", MethodOptions(modules_to_save=modules)), setup, backend="trace")
    assert r.status == "ok", r.detail.error
    assert r.measured.peak == r.predicted.peak
    assert r.measured.gradients == r.predicted.gradients and r.measured.weights == r.predicted.weights
    assert r.checkpoint_bytes == r.detail.predicted_checkpoint_bytes
