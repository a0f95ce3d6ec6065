"""Every method's parameter counts against peft's, exactly, on every catalogue model.

Each case builds the real transformers model on the meta device (no memory, any size), applies peft with
the config `peft_config` derives from our method object, and compares (trainable, total) with
`PeftModel.get_nb_trainable_parameters()`. LoRA-style cases also compare which modules were adapted.
peft mutates the model it wraps, so every peft application gets a freshly built model.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.layer import ParamWrapper
from peft.tuners.tuners_utils import BaseTunerLayer

from peftcalc.errors import PeftcalcError
from peftcalc.measure.hf_model import build_model
from peftcalc.measure.peft_config import peft_config
from peftcalc.methods import MethodOptions, make_method
from peftcalc.methods.adapter import BottleneckAdapter
from peftcalc.methods.ia3 import IA3
from peftcalc.methods.lora import Lora
from peftcalc.methods.prefix import KV_HEADS_CONFIGS
from peftcalc.methods.targets import MAMBA_MODEL_TYPES, matches, moe_conversion, peft_model_type
from peftcalc.model.catalogue import get_model, model_names
from peftcalc.model.spec import ModelSpec, expand_name

pytestmark = pytest.mark.catalogue


MODELS = model_names()  # at collection time: whatever the catalogue holds


def fresh_model(spec: ModelSpec) -> torch.nn.Module:
    """The model as from_pretrained leaves it. transformers 5 ties T5's lm_head to the embeddings in
    from_config whatever the config says; loading a checkpoint that has its own lm_head.weight (T5 v1.1,
    mT5: tie_word_embeddings false) unties it. Do the same, so the base total is the checkpoint's."""
    model = build_model(spec)
    for lin in spec.linears:
        if lin.head and not lin.tied:
            module = model.get_submodule(lin.name)
            if module.weight is model.get_input_embeddings().weight:
                module.weight = torch.nn.Parameter(torch.empty_like(module.weight))
    return model


def apply_peft(method: Any, spec: ModelSpec) -> Any:
    config = peft_config(method, spec)
    assert config is not None
    model = fresh_model(spec)
    # peft creates the prompt/prefix encoders on the CPU and only then moves them to the model's device: on
    # the meta device from the start, a projected prefix of a 13B model is not 2B random numbers to draw.
    with torch.device("meta"):
        return get_peft_model(model, config)


def expand(spec: ModelSpec, templates: tuple[str, ...]) -> set[str]:
    """Module name templates ("model.layers.{i}.q_proj" over its layers) -> every module name."""
    names: dict[str, set[str]] = {}
    for l in spec.linears:
        names.setdefault(l.name, set()).update(expand_name(l.name, l.layers, l.count))
    return set().union(*(names[t] for t in templates)) if templates else set()


def peft_adapted(peft_model: Any) -> set[str]:
    """Names (in the base model) of the modules peft replaced with a tuner layer; not the parameter wrappers
    of MoE routers and experts, which are not linears (their counts are checked all the same)."""
    base = peft_model.get_base_model()
    return {name for name, m in base.named_modules()
            if isinstance(m, BaseTunerLayer) and not isinstance(m, ParamWrapper)}


def check(method: Any, spec: ModelSpec) -> Any:
    """Our (trainable, total) == peft's; for module-adapting methods, the same modules adapted."""
    ours = method.adapt(spec)
    pm = apply_peft(method, spec)
    assert (ours.params.trainable, ours.params.total) == pm.get_nb_trainable_parameters()
    if isinstance(method, (Lora, IA3)):
        assert expand(spec, ours.adapted) == peft_adapted(pm)
    return pm


def method(name: str, **options: Any) -> Any:
    return make_method(name, MethodOptions(**options))


# --- LoRA and what builds on it --------------------------------------------------------------------------

def cycled(values: tuple[Any, ...]) -> list[tuple[str, Any]]:
    """Each model with one of `values`, in turn: every value is checked on a third (or a half) of the catalogue, and
    the counts are linear in it, so a value the count got wrong shows on every model given it."""
    return [(name, values[i % len(values)]) for i, name in enumerate(MODELS)]


@pytest.mark.parametrize("name,rank", cycled((1, 8, 64)))
def test_lora_default_targets(name: str, rank: int) -> None:
    check(method("lora", rank=rank), get_model(name))


@pytest.mark.parametrize("name", MODELS)
def test_lora_all_linear_and_qlora(name: str) -> None:
    """peft expands all-linear to every nn.Linear/Conv1D but the output embedding; ours, every non-head linear
    (and, on MoE models, the router and fused experts peft adds on transformers 5).

    QLoRA (all-linear by default) is checked against the same peft model: its trainable and total counts are
    those of the same LoRA on the unquantized model. 4-bit storage changes bytes, not how many parameters
    there are (peft's own count multiplies the packed Params4bit numel back by 2 for that reason), and
    bitsandbytes needs real weights on a GPU, so peft is applied to the unquantized meta model with the very
    LoraConfig QLoRA maps to."""
    spec = get_model(name)
    lora, q = method("lora", rank=16, targets=("all-linear",)), method("qlora", rank=16)
    if peft_model_type(spec) in MAMBA_MODEL_TYPES:  # peft refuses LoRA on a Mamba model's out_proj/conv1d
        with pytest.raises(PeftcalcError, match="peft refuses LoRA"):
            lora.adapt(spec)
        with pytest.raises(ValueError, match="incompatible with Mamba"):
            apply_peft(lora, spec)
        return
    config = peft_config(q, spec)
    assert config.target_modules == "all-linear" and config.r == 16 and not config.use_dora
    assert config == peft_config(lora, spec)
    pm = check(lora, spec)
    ours = q.adapt(spec)
    assert (ours.params.trainable, ours.params.total) == pm.get_nb_trainable_parameters()
    assert expand(spec, ours.adapted) == peft_adapted(pm)
    assert any(t.format == "nf4" for t in ours.tensors)


@pytest.mark.parametrize("name", MODELS)
def test_dora(name: str) -> None:
    check(method("dora", rank=8), get_model(name))


def explicit_target_lists(spec: ModelSpec) -> list[tuple[str, ...]]:
    """Target lists for `spec`, derived from its linears: one leaf name; the first and last non-head leaf
    names; a two-component suffix ("self_attn.q_proj"). Every leaf name at once is all-linear's work."""
    leaves = list(dict.fromkeys(l.leaf for l in spec.linears if not l.head))
    two = next(l.name.rsplit(".", 2) for l in spec.linears if "{i}" in l.name and not l.head)
    return [(leaves[0],), (leaves[0], leaves[-1]), (".".join(two[-2:]),)]


# Hand-written lists where suffix matching is subtle: BERT's "dense" names four kinds of module (attention
# output, intermediate, output and the MLM head's transform); GPT-2's "c_proj" both attention and MLP ones;
# T5's "q" self- and cross-attention; OPT-350m's project_in/out are outside the blocks.
SUBTLE_TARGETS: dict[str, list[tuple[str, ...]]] = {
    "bert": [("query", "dense"), ("output.dense",)],
    "roberta": [("dense",)],
    "gpt2": [("c_proj",), ("attn.c_proj", "c_fc")],
    "t5": [("q", "o", "wo"), ("EncDecAttention.k",), ("wi_0", "wi_1")],
    "mt5": [("q", "wi_0", "wi_1")],
    "opt": [("q_proj", "project_in", "project_out")],
    "llama": [("gate_proj", "up_proj", "down_proj")],
    "mixtral": [("q_proj", "k_proj", "v_proj", "o_proj")],
    "phi3": [("qkv_proj", "gate_up_proj")],
    "falcon": [("query_key_value", "dense_4h_to_h")],
    "bloom": [("self_attention.dense",)],
}


def explicit_cases() -> list[Any]:
    cases = []
    for name in MODELS:
        spec = get_model(name)
        lists = explicit_target_lists(spec)
        for targets in SUBTLE_TARGETS.get(spec.family, []):
            if targets not in lists and all(any(matches(l, t) for l in spec.linears) for t in targets):
                lists.append(targets)
        cases += [pytest.param(name, t, id=f"{name}-{','.join(t)}") for t in lists]
    return cases


@pytest.mark.parametrize("name,targets", explicit_cases())
def test_lora_explicit_targets(name: str, targets: tuple[str, ...]) -> None:
    spec = get_model(name)
    m = method("lora", rank=4, targets=targets)
    check(m, spec)
    assert peft_config(m, spec).target_modules == set(targets)


@pytest.mark.parametrize("name", MODELS)
def test_dora_and_qlora_explicit_targets(name: str) -> None:
    spec = get_model(name)
    targets = explicit_target_lists(spec)[1]
    if moe_conversion(spec, targets)[1]:  # the targets reach fused experts: peft has no DoRA for parameters
        with pytest.raises(PeftcalcError, match="DoRA"):
            method("dora", rank=2, targets=targets).adapt(spec)
        with pytest.raises(ValueError, match="(?i)dora"):
            apply_peft(method("dora", rank=2, targets=targets), spec)
    else:
        check(method("dora", rank=2, targets=targets), spec)
    check(method("qlora", rank=2, targets=targets), spec)


# --- Soft prompts and prefixes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,tokens", cycled((1, 20)))
def test_prompt_tuning(name: str, tokens: int) -> None:
    check(method("prompt", virtual_tokens=tokens), get_model(name))


@pytest.mark.parametrize("name", MODELS)
def test_ptuning(name: str) -> None:
    check(method("ptuning", virtual_tokens=10), get_model(name))


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
@pytest.mark.parametrize("name", MODELS)
def test_prefix_tuning(name: str, projection: bool) -> None:
    check(method("prefix", virtual_tokens=10, prefix_projection=projection), get_model(name))


# --- IA3 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_ia3_default_targets(name: str) -> None:
    check(method("ia3"), get_model(name))


@pytest.mark.parametrize("name", MODELS)
def test_ia3_explicit_targets(name: str) -> None:
    """With --targets, peft still takes the family's default feed-forward modules among the targeted ones
    (those scale their input, in_features long); the last linear of a block is typically one."""
    spec = get_model(name)
    for targets in explicit_target_lists(spec)[1:]:
        check(method("ia3", targets=targets), spec)
    leaves = tuple(dict.fromkeys(l.leaf for l in spec.linears if not l.head))
    check(method("ia3", targets=leaves), spec)  # every linear: the feed-forward ones among them


# --- Not in peft: full fine-tuning and bottleneck adapters ------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_full_trains_every_weight(name: str) -> None:
    spec = get_model(name)
    full = method("full")
    assert peft_config(full, spec) is None
    real = sum(p.numel() for p in fresh_model(spec).parameters())
    assert full.adapt(spec).params.trainable == full.adapt(spec).params.total == real


def block_counts(spec: ModelSpec) -> list[int]:
    """Transformer blocks per stack, from the arch numbers alone (T5: encoder and decoder)."""
    a = spec.arch
    if a.kind == "encoder-decoder":
        return [a.num_encoder_layers, a.num_layers - a.num_encoder_layers]
    return [a.num_layers]


@pytest.mark.parametrize("variant,per_block", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("name", MODELS)
def test_bottleneck_adapter_paper_formula(name: str, variant: str, per_block: int) -> None:
    """Houlsby et al. 2019, section 2.1: an adapter of bottleneck b on hidden size h has 2hb + b + h
    parameters (down and up projections with biases); Houlsby puts 2 per block, Pfeiffer 1."""
    spec = get_model(name)
    b, h = 16, spec.arch.hidden_size
    m = BottleneckAdapter(b, variant)  # type: ignore[arg-type]
    assert peft_config(m, spec) is None
    expected = sum(block_counts(spec)) * per_block * (2 * h * b + b + h)
    params = m.adapt(spec).params
    assert params.trainable == expected
    assert params.total == spec.total_params + expected


def test_prefix_with_kv_heads_uses_grouped_width() -> None:
    """The grouped-query rule on one model whose config has num_key_value_heads < num_attention_heads: the
    prefix is num_layers x 2 x num_kv_heads x head_dim wide. (Falcon's multi-query config has no
    num_key_value_heads key: peft, and so peftcalc, sizes its prefix with the full hidden size.)"""
    spec = next((s for s in map(get_model, MODELS)
                 if s.family in KV_HEADS_CONFIGS and s.arch.num_kv_heads < s.arch.num_heads), None)
    if spec is None:
        pytest.skip("no grouped-query model in the catalogue")
    a = spec.arch
    pm = check(method("prefix", virtual_tokens=3), spec)
    weight = pm.prompt_encoder["default"].embedding.weight
    assert tuple(weight.shape) == (3, a.num_layers * 2 * a.num_kv_heads * a.head_dim)


MOE_MODELS = [n for n in MODELS if moe_conversion(get_model(n), ("all-linear",))[1]]


@pytest.mark.parametrize("name", MOE_MODELS)
def test_dora_all_linear_on_moe_is_refused_like_peft(name: str) -> None:
    """all-linear reaches Mixtral's router and fused experts, which peft wraps as parameters; peft's
    ParamWrapper has no DoRA, so both peft and peftcalc refuse."""
    spec = get_model(name)
    m = method("dora", targets=("all-linear",))
    with pytest.raises(PeftcalcError, match="DoRA"):
        m.adapt(spec)
    with pytest.raises(ValueError, match="(?i)dora"):
        apply_peft(m, spec)


def test_module_regex_matches_exactly() -> None:
    from peftcalc.measure.peft_config import module_regex
    rx = module_regex(["model.layers.{i}.mlp.down_proj", "lm_head"])
    assert re.fullmatch(rx, "model.layers.12.mlp.down_proj") and re.fullmatch(rx, "lm_head")
    assert not re.fullmatch(rx, "model.layers.1.mlp.down_proj_x") and not re.fullmatch(rx, "model_layers.1.mlp.down_proj")
