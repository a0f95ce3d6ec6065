"""--params N: a Llama-style shape that totals exactly N."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftcalc.errors import PeftcalcError
from peftcalc.model.infer import infer_spec


def test_7b_is_llama_2_7b_shaped():
    s = infer_spec(7 * 10**9)
    assert (s.arch.hidden_size, s.arch.num_layers, s.arch.num_heads, s.arch.vocab_size) == (4096, 32, 32, 32000)
    assert s.total_params == 7 * 10**9


@settings(max_examples=200, deadline=None)
@given(st.integers(5 * 10**7, 10**12))
def test_total_is_exact_and_the_remainder_small(n):
    s = infer_spec(n)
    assert s.total_params == n
    remainder = n - s.shape_params
    assert 0 <= remainder < 3 * s.arch.hidden_size * s.arch.num_layers


def test_overrides_are_respected():
    s = infer_spec(7 * 10**9, hidden_size=5120, num_hidden_layers=30, num_attention_heads=40)
    assert (s.arch.hidden_size, s.arch.num_layers, s.arch.num_heads) == (5120, 30, 40)
    assert s.total_params == 7 * 10**9


@pytest.mark.parametrize("n, kw, message", [
    (10**6, {}, "50M parameters and up"),
    (0, {}, "positive"),
    (10**9, {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672}, "more than --params"),
])
def test_impossible_requests(n, kw, message):
    with pytest.raises(PeftcalcError, match=message):
        infer_spec(n, **kw)
