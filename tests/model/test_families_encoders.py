"""T5/mT5 and BERT/RoBERTa builders against the real transformers models, built on the meta device."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
import torch

from peftcalc.errors import ConfigError
from peftcalc.measure.hf_model import build_model
from peftcalc.model.catalogue import get_model
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec

CATALOGUE = ["t5-base", "t5-large", "t0-3b", "flan-t5-xl", "mt0-large", "mt0-xxl",
             "bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large"]

T5_TINY = dict(model_type="t5", vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
BERT_TINY = dict(model_type="bert", vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=40)

SMALL = {
    "t5-v1.0": T5_TINY,
    "t5-v1.1-untied": {**T5_TINY, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "t5-gated-tied": {**T5_TINY, "feed_forward_proj": "gated-silu", "tie_word_embeddings": True},
    "t5-asymmetric-dkv": {**T5_TINY, "d_kv": 12, "num_heads": 3, "num_decoder_layers": 3,
                          "relative_attention_num_buckets": 16},
    "mt5": dict(model_type="mt5", vocab_size=211, d_model=40, d_kv=16, d_ff=56, num_layers=2, num_heads=3,
                tie_word_embeddings=False),
    "mt5-no-tie-key": dict(model_type="mt5", vocab_size=211, d_model=40, d_ff=56, num_layers=1, num_heads=2),
    "bert": BERT_TINY,
    "bert-untied": {**BERT_TINY, "tie_word_embeddings": False, "type_vocab_size": 3},
    "roberta": {**BERT_TINY, "model_type": "roberta", "max_position_embeddings": 42, "type_vocab_size": 1,
                "pad_token_id": 1},
    "roberta-untied": {**BERT_TINY, "model_type": "roberta", "tie_word_embeddings": False},
}


def build(spec: ModelSpec) -> torch.nn.Module:
    """The model as from_pretrained leaves it. transformers 5 ties T5's lm_head in from_config whatever the
    config says, and unties it on loading a checkpoint with its own lm_head.weight (v1.1, mT5): do the same."""
    model = build_model(spec)
    for lin in spec.linears:
        if lin.head and not lin.tied:
            module = model.get_submodule(lin.name)
            if module.weight is model.get_input_embeddings().weight:
                module.weight = torch.nn.Parameter(torch.empty_like(module.weight))
    return model


def model_linears(model: torch.nn.Module) -> Counter:
    found: Counter = Counter()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            # The block index only: T5's sub-layer index (`layer.0`, `layer.1`) is part of the name.
            template = re.sub(r"\.(block|layer)\.\d+\.", r".\1.{i}.", name, count=1)
            found[(template, m.in_features, m.out_features, m.bias is not None)] += 1
    return found


def spec_linears(spec: ModelSpec) -> Counter:
    return Counter({(l.name, l.in_features, l.out_features, l.bias): l.count for l in spec.linears})


def check(spec: ModelSpec) -> None:
    model = build(spec)
    assert spec.inventory_params == sum(p.numel() for p in model.parameters())
    assert spec_linears(spec) == model_linears(model)
    assert len({l.name for l in spec.linears}) == len(spec.linears)  # templates are not repeated


@pytest.mark.parametrize("key", SMALL)
def test_small_configs_match_transformers(key: str) -> None:
    check(spec_from_config(SMALL[key], key, "test"))


@pytest.mark.parametrize("name", CATALOGUE)
def test_catalogue_matches_transformers(name: str) -> None:
    check(get_model(name))


# Published totals of the checkpoints as they load (Hugging Face safetensors counts, KerasNLP presets). BERT's
# often-quoted 110M (109,482,240) is BertModel with its pooler; BertForMaskedLM drops the pooler and adds the
# head's transform, LayerNorm and vocab bias. mt0-large (1.23B) and mt0-xxl (13B) are only published rounded.
PUBLISHED = {
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t0-3b": 2_849_757_184,  # the t5-v1_1-xl shape, as flan-t5-xl
    "flan-t5-xl": 2_849_757_184,
    "bert-base-uncased": 109_514_298,
    "bert-large-uncased": 335_174_458,
    "roberta-base": 124_697_433,
    "roberta-large": 355_412_057,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_counts(name: str) -> None:
    assert get_model(name).inventory_params == PUBLISHED[name]


@pytest.mark.parametrize("family,cfg", [("t5", T5_TINY), ("mt5", SMALL["mt5"]), ("bert", BERT_TINY),
                                        ("roberta", SMALL["roberta"])])
def test_peft_default_targets_name_spec_linears(family: str, cfg: dict[str, Any]) -> None:
    """peft's default LoRA and IA3 targets match by name suffix; each must find a linear of the spec."""
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3,
                                      TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA)
    names = [l.name for l in spec_from_config(cfg, family, "test").linears]
    for target in LORA[family] + IA3[family]:
        assert any(n == target or n.endswith("." + target) for n in names), target


def test_t5_variants() -> None:
    v10 = get_model("t5-base")
    assert v10.arch.kind == "encoder-decoder" and v10.arch.tie_embeddings and not v10.arch.gated_mlp
    assert v10.arch.num_layers == 24 and v10.arch.num_encoder_layers == 12
    assert {l.leaf for l in v10.linears} == {"q", "k", "v", "o", "wi", "wo", "lm_head"}
    flan = get_model("flan-t5-xl")
    assert flan.arch.gated_mlp and not flan.arch.tie_embeddings
    assert {l.leaf for l in flan.linears} >= {"wi_0", "wi_1"}
    assert get_model("mt0-xxl").arch.head_dim == 64 and get_model("mt0-xxl").arch.hidden_size == 4096
    # Cross-attention only in the decoder, every T5 linear tagged with its stack.
    assert all(l.block == "decoder" for l in flan.linears if "EncDecAttention" in l.name)
    assert all(l.block in ("encoder", "decoder") for l in flan.linears)


def test_encoder_arch() -> None:
    bert, roberta = get_model("bert-base-uncased"), get_model("roberta-large")
    assert bert.arch.kind == roberta.arch.kind == "encoder"
    assert bert.arch.max_positions == 512 and roberta.arch.max_positions == 512  # roberta's table is 514
    assert [l.name for l in bert.linears if l.head] == ["cls.predictions.decoder"]
    assert [l.name for l in roberta.linears if l.head] == ["lm_head.decoder"]
    assert roberta.arch.num_layers == 24 and roberta.arch.head_dim == 64


DEFAULT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (dict(model_type="t5"), dict(hidden_size=512, num_layers=12, num_encoder_layers=6, num_heads=8, head_dim=64,
                                 ffn_size=2048, vocab_size=32128, gated_mlp=False, tie_embeddings=True)),
    (dict(model_type="mt5"), dict(hidden_size=512, num_layers=16, num_encoder_layers=8, num_heads=6, head_dim=64,
                                  ffn_size=1024, vocab_size=250112, gated_mlp=True, tie_embeddings=False)),
    (dict(model_type="bert"), dict(hidden_size=768, num_layers=12, num_heads=12, head_dim=64, ffn_size=3072,
                                   vocab_size=30522, max_positions=512, tie_embeddings=True)),
    (dict(model_type="roberta"), dict(hidden_size=768, num_layers=12, num_heads=12, head_dim=64, ffn_size=3072,
                                      vocab_size=50265, max_positions=510, tie_embeddings=True)),
]


@pytest.mark.parametrize("cfg,expected", DEFAULT_CASES, ids=[c["model_type"] for c, _ in DEFAULT_CASES])
def test_missing_keys_use_transformers_defaults(cfg: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = spec_from_config(cfg, "defaults", "test")
    for key, value in expected.items():
        assert getattr(spec.arch, key) == value, key
    check(spec)  # and transformers builds the same model from the same bare config


@pytest.mark.parametrize("cfg", [
    {**T5_TINY, "feed_forward_proj": "swish-gelu"},
    {**T5_TINY, "d_kv": 0},
    {**BERT_TINY, "num_attention_heads": 5},
    {**BERT_TINY, "add_cross_attention": True, "is_decoder": True},
])
def test_bad_configs_are_config_errors(cfg: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        spec_from_config(cfg, "bad", "test")
