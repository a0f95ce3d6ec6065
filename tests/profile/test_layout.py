"""peftcalc.profile.layout and .plan: which layers and which sizes a profile traces."""

from __future__ import annotations

import pytest

from peftcalc.profile.layout import (Layout, config_layer_types, layer_count, layouts, reduce_config,
                                     representative)
from peftcalc.profile.plan import plan, thresholds


def test_a_uniform_stack_traces_first_one_middle_last_then_one_more():
    a, b = layouts(["x"] * 32)
    assert a == Layout((0, 1, 31), 32) and b == Layout((0, 1, 2, 31), 32)
    assert representative(["x"] * 32, a) == [0] + [1] * 30 + [2]


def test_a_hybrid_stack_traces_one_middle_layer_of_each_type():
    """Gemma 3's five sliding-window layers to one global layer."""
    types = (["sliding"] * 5 + ["full"]) * 4  # 24 layers, the last one global
    a, b = layouts(types)
    assert a.selected == (0, 1, 5, 23) and b.selected == (0, 1, 2, 5, 23)
    rep = representative(types, a)
    assert rep[0] == 0 and rep[23] == 3
    assert {rep[i] for i in range(1, 23) if types[i] == "sliding"} == {1}
    assert {rep[i] for i in range(1, 23) if types[i] == "full"} == {2}


def test_small_stacks_are_traced_whole():
    a, b = layouts(["x", "y", "x"])
    assert a == b == Layout((0, 1, 2), 3)
    with pytest.raises(ValueError):
        layouts(["x", "x"])


def test_reduce_config_rewrites_per_layer_entries_index_lists_and_leading_counts():
    cfg = {"model_type": "m", "num_hidden_layers": 6, "layer_types": ["a", "a", "b", "a", "b", "a"],
           "hybrid_override_pattern": "M*M-M*", "mlp_only_layers": [2, 5], "first_k_dense_replace": 2,
           "vocab_size": 6}
    out = reduce_config(cfg, Layout((0, 2, 3, 5), 6))
    assert out["num_hidden_layers"] == 4
    assert out["layer_types"] == ["a", "b", "a", "a"]
    assert out["hybrid_override_pattern"] == "MM-*"
    assert out["mlp_only_layers"] == [1, 3]
    assert out["first_k_dense_replace"] == 1
    assert out["vocab_size"] == 6 and cfg["num_hidden_layers"] == 6


def test_layer_types_from_the_config():
    cfg = {"num_hidden_layers": 4, "layer_types": ["s", "f", "s", "f"], "mlp_only_layers": [0],
           "first_k_dense_replace": 1}
    types = config_layer_types(cfg, 4)
    assert types[0] != types[2] and types[1] == types[3] and types[2] != types[1]


def test_the_layer_count_of_a_config_that_lists_its_layers_only():
    """Nemotron-H's config has no count: its pattern (layers_block_type) is the list of layers."""
    assert layer_count({"layers_block_type": ["mamba", "attention", "mlp"]}) == 3
    with pytest.raises(ValueError):
        layer_count({"hidden_size": 8})


def test_plan_keeps_the_grid_on_the_side_of_the_sliding_window_the_sequence_is_on():
    cfg = {"sliding_window": 512, "max_window_layers": 28}
    assert thresholds(cfg) == (512,)  # a count of layers is no length
    long = plan(cfg, 4, 2048)
    assert min(long.seqs) > 512 and long.regime.seq_lo == 512 and long.regime.covers(8, 4096)
    assert all(s % 64 == 2048 % 64 for s in long.seqs) and long.batches == (2, 3)
    short = plan(cfg, 1, 300)
    assert max(short.seqs) <= 512 and short.check[1] <= 512 and short.batches == (1,)
    assert short.regime.covers(1, 364) and not short.regime.covers(1, 364 + 192) and not short.regime.covers(2, 300)
    assert not short.regime.covers(1, 301)  # another residue: until a traced step there widens it


def test_plan_residue_classes_follow_the_chunk_size():
    p = plan({"chunk_size": 128}, 2, 1000)
    assert p.regime.modulus == 128 and p.regime.residue == 1000 % 128
    assert all(s % 128 == 1000 % 128 for s in p.seqs) and min(p.seqs) > 128
    assert p.widen_residue is not None and p.widen_residue[1] % 128 != 1000 % 128
