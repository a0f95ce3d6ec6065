"""Properties of the method formulas on small synthetic models (hypothesis-drawn configs, no torch)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from peftcalc.errors import PeftcalcError
from peftcalc.methods import METHODS, MethodOptions, make_method
from peftcalc.methods.ia3 import IA3
from peftcalc.methods.lora import Lora
from peftcalc.methods.prefix import PrefixTuning
from peftcalc.methods.prompt import PromptTuning, PTuning
from peftcalc.methods.targets import matches, moe_conversion
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import Linear, ModelSpec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
small = st.integers(min_value=1, max_value=6)


FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "phi3", "gpt2", "opt", "bloom", "t5", "mt5", "bert", "roberta")


@st.composite
def configs(draw: Any, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """A small config.json of one of the supported families, every size drawn."""
    family = draw(st.sampled_from(families))
    heads, head_dim, layers = draw(small), draw(st.integers(2, 12)), draw(st.integers(1, 4))
    hidden = heads * head_dim
    ffn, vocab = draw(st.integers(2, 64)), draw(st.integers(8, 300))
    if family in ("llama", "mistral", "mixtral", "qwen2", "phi3"):
        kv = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
        cfg = dict(model_type=family, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                   tie_word_embeddings=draw(st.booleans()))
        if family == "mixtral":
            experts = draw(st.integers(1, 8))
            cfg.update(num_local_experts=experts, num_experts_per_tok=draw(st.integers(1, experts)))
        return cfg
    if family == "gpt2":
        return dict(model_type="gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn,
                    n_positions=draw(st.integers(4, 64)), vocab_size=vocab)
    if family == "opt":
        return dict(model_type="opt", hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                    num_attention_heads=heads, max_position_embeddings=draw(st.integers(4, 64)), vocab_size=vocab,
                    word_embed_proj_dim=draw(st.sampled_from([hidden, max(2, hidden // 2)])))
    if family == "bloom":
        return dict(model_type="bloom", hidden_size=hidden, n_layer=layers, n_head=heads, vocab_size=vocab)
    if family in ("t5", "mt5"):
        return dict(model_type=family, d_model=draw(st.integers(2, 48)), d_kv=head_dim, d_ff=ffn, num_layers=layers,
                    num_decoder_layers=draw(st.integers(1, 4)), num_heads=heads, vocab_size=vocab,
                    feed_forward_proj=draw(st.sampled_from(["relu", "gated-gelu"])))
    return dict(model_type=family, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=draw(st.integers(4, 64)), vocab_size=vocab)


specs = configs().map(lambda cfg: spec_from_config(cfg, "synthetic", "hypothesis"))


@st.composite
def spec_and_targets(draw: Any) -> tuple[ModelSpec, tuple[str, ...]]:
    """A synthetic spec and a non-empty list of its non-head linear leaf names (or all-linear)."""
    spec = draw(specs)
    leaves = sorted({l.leaf for l in spec.linears if not l.head})
    if draw(st.integers(0, 4)) == 0:
        return spec, ("all-linear",)
    return spec, tuple(draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=4, unique=True)))


def adapted_linears(spec: ModelSpec, targets: tuple[str, ...]) -> list[Linear]:
    if targets == ("all-linear",):
        return [l for l in spec.linears if not l.head]
    return [l for l in spec.linears if any(matches(l, t) for t in targets)]


def moe_lora_per_rank(spec: ModelSpec, targets: tuple[str, ...]) -> int:
    """LoRA parameters per unit of rank that all-linear adds on a Mixtral (peft on transformers 5): the router
    (E x h) as one linear, and each fused expert tensor (E, out, in) with E x k x r, k = 2 for gate_up_proj."""
    a = spec.arch
    if targets != ("all-linear",) or not a.num_experts:
        return 0
    e, h, f = a.num_experts, a.hidden_size, a.ffn_size
    return a.num_layers * ((h + e) + e * 2 * (h + 2 * f) + e * (f + h))


def max_rank(spec: ModelSpec, targets: tuple[str, ...]) -> int:
    return min(min(l.in_features, l.out_features) for l in adapted_linears(spec, targets))


# --- LoRA family -----------------------------------------------------------------------------------------

@SETTINGS
@given(spec_and_targets(), st.data())
def test_lora_trainable_is_linear_in_rank(case: tuple[ModelSpec, tuple[str, ...]], data: Any) -> None:
    spec, targets = case
    r = data.draw(st.integers(1, max_rank(spec, targets)), label="rank")
    f = lambda rank: Lora(rank, targets).adapt(spec).params.trainable  # noqa: E731
    assert f(r) == r * f(1)
    # and f(1) is the paper's r(in + out) per adapted matrix
    assert f(1) == sum((l.in_features + l.out_features) * l.count for l in adapted_linears(spec, targets)) + \
        moe_lora_per_rank(spec, targets)


@SETTINGS
@given(spec_and_targets(), st.data())
def test_dora_adds_one_magnitude_per_output_feature(case: tuple[ModelSpec, tuple[str, ...]], data: Any) -> None:
    spec, targets = case
    r = data.draw(st.integers(1, max_rank(spec, targets)), label="rank")
    if moe_lora_per_rank(spec, targets):  # peft has no DoRA for the router and experts all-linear reaches
        with pytest.raises(PeftcalcError, match="DoRA"):
            Lora(r, targets, magnitude=True).adapt(spec)
        return
    lora, dora = Lora(r, targets).adapt(spec).params, Lora(r, targets, magnitude=True).adapt(spec).params
    extra = sum(l.out_features * l.count for l in adapted_linears(spec, targets))
    assert dora.trainable == lora.trainable + extra
    assert dora.total == lora.total + extra


@SETTINGS
@given(configs(("mixtral",)).map(lambda cfg: spec_from_config(cfg, "moe", "hypothesis")), st.data())
def test_moe_all_linear_lora_is_linear_in_rank(spec: ModelSpec, data: Any) -> None:
    """all-linear on a Mixtral (also QLoRA's default): attention linears plus router and fused experts."""
    r = data.draw(st.integers(1, max_rank(spec, ("all-linear",))), label="rank")
    f = lambda rank: Lora(rank, ("all-linear",)).adapt(spec).params.trainable  # noqa: E731
    assert f(r) == r * f(1)
    attention = sum((l.in_features + l.out_features) * l.count for l in spec.linears if not l.head)
    assert f(1) == attention + moe_lora_per_rank(spec, ("all-linear",))
    assert make_method("qlora", MethodOptions(rank=r)).adapt(spec).params.trainable == f(r)
    with pytest.raises(PeftcalcError, match="DoRA"):
        Lora(1, ("all-linear",), magnitude=True).adapt(spec)


@SETTINGS
@given(spec_and_targets(), st.data())
def test_qlora_counts_equal_lora(case: tuple[ModelSpec, tuple[str, ...]], data: Any) -> None:
    """Quantized storage changes bytes, never the number of parameters."""
    spec, targets = case
    r = data.draw(st.integers(1, max_rank(spec, targets)), label="rank")
    for bits in (4, 8):
        q = make_method("qlora", MethodOptions(rank=r, targets=targets, quant_bits=bits))
        assert q.adapt(spec).params == Lora(r, targets).adapt(spec).params


def widest_rank(spec: ModelSpec, targets: tuple[str, ...]) -> int:
    return max(min(l.in_features, l.out_features) for l in adapted_linears(spec, targets))


@SETTINGS
@given(spec_and_targets(), st.data())
def test_rank_larger_than_every_target_matrix_is_an_error(case: tuple[ModelSpec, tuple[str, ...]], data: Any) -> None:
    spec, targets = case
    too_big = widest_rank(spec, targets) + data.draw(st.integers(1, 50), label="excess")
    for name in ("lora", "dora", "qlora"):  # (checked before DoRA's MoE refusal: the message says --rank)
        with pytest.raises(PeftcalcError, match="--rank"):
            make_method(name, MethodOptions(rank=too_big, targets=targets)).adapt(spec)


@SETTINGS
@given(spec_and_targets(), st.data())
def test_rank_above_some_target_matrices_is_noted_as_peft_accepts_it(case: tuple[ModelSpec, tuple[str, ...]],
                                                                     data: Any) -> None:
    """peft builds lora_A (r x in) and lora_B (out x r) whatever r (a (1 x h) shared-expert gate under all-linear):
    peftcalc counts them and says so."""
    spec, targets = case
    lo, hi = max_rank(spec, targets), widest_rank(spec, targets)
    if lo == hi or moe_conversion(spec, targets)[1]:  # (MoE routers and experts add their own adapters)
        return
    r = data.draw(st.integers(lo + 1, hi), label="rank")
    a = make_method("lora", MethodOptions(rank=r, targets=targets)).adapt(spec)
    assert any("exceeds the smaller side" in n for n in a.notes)
    assert a.params.trainable == sum(r * (l.in_features + l.out_features) * l.count
                                     for l in adapted_linears(spec, targets))


@SETTINGS
@given(specs, st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_unknown_target_names_the_available_modules(spec: ModelSpec, bogus: str) -> None:
    assume(not any(matches(l, bogus) for l in spec.linears))
    for m in (Lora(1, (bogus,)), Lora(1, (bogus,), magnitude=True), IA3((bogus,))):
        with pytest.raises(PeftcalcError) as err:
            m.adapt(spec)
        message = str(err.value)
        assert bogus in message
        for leaf in {l.leaf for l in spec.linears}:
            assert leaf in message


@SETTINGS
@given(spec_and_targets(), st.data())
def test_unknown_target_among_known_ones_is_an_error(case: tuple[ModelSpec, tuple[str, ...]], data: Any) -> None:
    spec, targets = case
    assume(targets != ("all-linear",))
    with pytest.raises(PeftcalcError, match="not_a_module"):
        Lora(1, targets + ("not_a_module",)).adapt(spec)


# --- Soft prompts and prefixes ---------------------------------------------------------------------------

@SETTINGS
@given(specs, st.integers(1, 200), st.integers(1, 200))
def test_prompt_params_linear_in_virtual_tokens(spec: ModelSpec, n: int, m: int) -> None:
    a = spec.arch
    for cls in (PromptTuning, PTuning, PrefixTuning):
        f = lambda k: cls(k).adapt(spec).params.trainable  # noqa: E731
        step = f(2) - f(1)
        assert f(n + m) - f(n) == m * step  # affine in the number of tokens
        if cls is PromptTuning:
            assert f(n) == n * step == n * a.stacks * a.token_dim  # no constant: just the prompt
    proj = lambda k: PrefixTuning(k, projection=True).adapt(spec).params.trainable  # noqa: E731
    assert proj(n + m) - proj(n) == m * (proj(2) - proj(1))


# --- Totals ----------------------------------------------------------------------------------------------

@SETTINGS
@given(specs, st.sampled_from(sorted(METHODS)), st.integers(1, 2), st.integers(1, 8))
def test_total_is_base_plus_trainable(spec: ModelSpec, name: str, rank: int, tokens: int) -> None:
    bottleneck = min(4, spec.arch.hidden_size)
    params = make_method(name, MethodOptions(rank=rank, virtual_tokens=tokens, bottleneck=bottleneck)).adapt(spec).params
    if name == "full":
        assert params.trainable == params.total == spec.total_params
    else:
        assert params.total == spec.total_params + params.trainable
        assert 0 < params.trainable < params.total
