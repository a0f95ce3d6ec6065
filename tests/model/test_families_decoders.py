"""The decoder family builders (gpt2, gpt_neox, opt, bloom, falcon) and the decoder catalogue, checked
against the real transformers models built on the meta device: same parameter count, same linear layers."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from peftcalc.errors import ConfigError
from peftcalc.measure.hf_model import build_model
from peftcalc.model.catalogue import get_model
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec

LinearKey = tuple[str, int, int, bool, bool]  # template name, in, out, bias, conv1d

CATALOGUE = [
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b", "llama-3.1-70b",
    "llama-3.1-405b", "mistral-7b", "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b", "phi-3-mini",
    "gemma-2b", "gemma-7b", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "opt-350m", "opt-6.7b",
    "bloom-560m", "bloomz-7b1", "falcon-7b",
]

# Published totals (model cards, Hugging Face safetensors metadata); the tied head is counted once.
PUBLISHED = {
    "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496, "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496, "llama-3.1-405b": 405_853_388_800, "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704, "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-72b": 72_706_203_648, "phi-3-mini": 3_821_079_552, "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896, "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200, "opt-350m": 331_196_416, "opt-6.7b": 6_658_473_984, "bloom-560m": 559_214_592,
    "bloomz-7b1": 7_069_016_064, "falcon-7b": 6_921_720_704,
}

TINY_GPT2 = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=101)
TINY_NEOX = dict(model_type="gpt_neox", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=96, max_position_embeddings=32, vocab_size=101)
TINY_OPT = dict(model_type="opt", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
                max_position_embeddings=32, vocab_size=101)
TINY_BLOOM = dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4, vocab_size=101)
TINY_FALCON = dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                   vocab_size=101, max_position_embeddings=32)

SMALL: dict[str, dict[str, Any]] = {
    "gpt2": TINY_GPT2,
    "gpt2-untied": {**TINY_GPT2, "tie_word_embeddings": False},
    "gpt2-n_inner": {**TINY_GPT2, "n_inner": 80},
    "gpt2-cross-attention": {**TINY_GPT2, "add_cross_attention": True},
    "gpt2-standard-names-win": {**TINY_GPT2, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
                                "max_position_embeddings": 16},
    "gpt_neox": TINY_NEOX,
    "gpt_neox-no-attention-bias": {**TINY_NEOX, "attention_bias": False},
    "gpt_neox-tied": {**TINY_NEOX, "tie_word_embeddings": True},
    "opt": TINY_OPT,
    "opt-projection": {**TINY_OPT, "word_embed_proj_dim": 32, "do_layer_norm_before": False},
    "opt-projection-untied": {**TINY_OPT, "word_embed_proj_dim": 48, "tie_word_embeddings": False},
    "opt-no-bias-no-affine": {**TINY_OPT, "enable_bias": False, "layer_norm_elementwise_affine": False},
    "opt-removed-final-norm": {**TINY_OPT, "_remove_final_layer_norm": True},
    "bloom": TINY_BLOOM,
    "bloom-untied": {**TINY_BLOOM, "tie_word_embeddings": False},
    "bloom-n_embed-wins": {**TINY_BLOOM, "n_embed": 32, "num_hidden_layers": 3, "num_attention_heads": 2},
    "falcon-multi-query": TINY_FALCON,  # falcon-7b's layout
    "falcon-multi-head-alibi-sequential": {**TINY_FALCON, "multi_query": False, "parallel_attn": False,
                                           "alibi": True, "bias": True},  # falcon-rw layout
    "falcon-new-arch-gqa": {**TINY_FALCON, "new_decoder_architecture": True, "num_kv_heads": 2},  # falcon-40b
    "falcon-new-arch-one-norm": {**TINY_FALCON, "new_decoder_architecture": True, "num_kv_heads": 4,
                                 "num_ln_in_parallel_attn": 1},
    "falcon-new-arch-default-kv": {**TINY_FALCON, "new_decoder_architecture": True},
    "falcon-parallel-two-norms": {**TINY_FALCON, "num_ln_in_parallel_attn": 2},
    "falcon-untied-ffn-bias": {**TINY_FALCON, "tie_word_embeddings": False, "ffn_hidden_size": 72, "bias": True},
    "falcon-n_embed-wins": {**TINY_FALCON, "n_embed": 32},
}


def _template(name: str) -> str:
    return re.sub(r"\.\d+\.", ".{i}.", name)


def real_linears(model: torch.nn.Module) -> Counter[LinearKey]:
    found: Counter[LinearKey] = Counter()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            key = (_template(name), m.in_features, m.out_features, m.bias is not None, False)
        elif isinstance(m, Conv1D):
            key = (_template(name), m.weight.shape[0], m.weight.shape[1], m.bias is not None, True)
        else:
            continue
        found[key] += 1
    return found


def spec_linears(spec: ModelSpec) -> Counter[LinearKey]:
    listed: Counter[LinearKey] = Counter()
    for l in spec.linears:
        listed[(l.name, l.in_features, l.out_features, l.bias, l.conv1d)] += l.count
    return listed


def check_against_transformers(spec: ModelSpec) -> None:
    model = build_model(spec)
    assert spec.inventory_params == sum(p.numel() for p in model.parameters())
    assert spec_linears(spec) == real_linears(model)
    # lm_head is a module either way; tied means it shares the embedding's tensor.
    head = model.get_output_embeddings()
    assert (head.weight is model.get_input_embeddings().weight) == spec.arch.tie_embeddings
    assert [l.tied for l in spec.linears if l.head] == [spec.arch.tie_embeddings]


@pytest.mark.parametrize("case", SMALL)
def test_small_config_matches_transformers(case: str) -> None:
    check_against_transformers(spec_from_config(SMALL[case], case, "test"))


@pytest.mark.parametrize("name", CATALOGUE)
def test_catalogue_model_matches_transformers_and_published_count(name: str) -> None:
    spec = get_model(name)
    check_against_transformers(spec)
    assert spec.inventory_params == PUBLISHED[name]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "opt", "bloom", "falcon"])
def test_missing_keys_take_transformers_defaults(family: str) -> None:
    spec = spec_from_config({"model_type": family}, family, "test")
    model = build_model(spec)
    assert spec.inventory_params == sum(p.numel() for p in model.parameters())
    assert spec_linears(spec) == real_linears(model)


def test_architecture_fields() -> None:
    gpt2 = spec_from_config(TINY_GPT2, "t", "test").arch
    assert (gpt2.ffn_size, gpt2.head_dim, gpt2.max_positions) == (256, 16, 32)
    assert gpt2.norm == "layernorm" and not gpt2.gated_mlp and gpt2.tie_embeddings and gpt2.kind == "decoder"
    falcon7b = get_model("falcon-7b").arch
    assert (falcon7b.num_kv_heads, falcon7b.head_dim, falcon7b.ffn_size, falcon7b.max_positions) == (1, 64, 18176, 2048)
    gqa = spec_from_config(SMALL["falcon-new-arch-gqa"], "t", "test").arch
    assert gqa.num_kv_heads == 2
    assert spec_from_config(SMALL["falcon-multi-head-alibi-sequential"], "t", "test").arch.max_positions is None
    assert get_model("bloom-560m").arch.max_positions is None
    opt350 = get_model("opt-350m")
    assert {l.leaf for l in opt350.linears} >= {"project_in", "project_out"}
    assert opt350.arch.hidden_size == 1024 and opt350.arch.max_positions == 2048


def test_indivisible_heads_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        spec_from_config({**TINY_BLOOM, "n_head": 5}, "t", "test")
