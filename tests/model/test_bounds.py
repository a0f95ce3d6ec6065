"""Sizes no real model has are refused at once with one line; the bounds are 10x the catalogue's largest."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.errors import PeftcalcError
from peftcalc.model.bounds import BOUNDS, FACTOR, LARGEST, check_config
from peftcalc.model.catalogue import get_model, model_names


@pytest.mark.slow
def test_bounds_are_ten_times_the_catalogue_largest() -> None:
    best: dict[str, tuple[int, str]] = {}
    for name in model_names():
        s = get_model(name)
        a = s.arch
        for k, v in dict(params=s.total_params, layers=a.num_layers, hidden=a.hidden_size, vocab=a.vocab_size,
                         ffn=a.ffn_size, heads=a.num_heads, experts=a.num_experts).items():
            if v > best.get(k, (0, ""))[0]:
                best[k] = (v, name)
    assert best == LARGEST
    assert all(BOUNDS[k] == FACTOR * v for k, (v, _) in LARGEST.items())


@pytest.mark.parametrize("args,message", [
    (["--params", "1e14"], "more parameters than any real model"),
    (["--params", "1e15"], "more parameters than any real model"),
    (["--params", "7e9", "--layers", "1000000"], "--layers 1,000,000 is larger than any real model"),
    (["--params", "7e9", "--hidden", "10000000"], "--hidden 10,000,000 is larger than any real model"),
])
def test_absurd_sizes_are_refused_in_one_line(args: list[str], message: str) -> None:
    r = CliRunner().invoke(main, ["estimate", *args])
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("cfg,message", [
    ({"model_type": "llama", "num_hidden_layers": 10**6}, "num_hidden_layers 1,000,000 is larger"),
    ({"model_type": "qwen3", "hidden_size": 10**7}, "hidden_size 10,000,000 is larger"),
    ({"model_type": "qwen3", "vocab_size": -5}, "vocab_size must be positive"),
    ({"model_type": "qwen3", "num_attention_heads": 0}, "num_attention_heads must be positive"),
    ({"model_type": "qwen3", "intermediate_size": 2.5}, "intermediate_size must be a whole number"),
    ({"model_type": "gemma3", "text_config": {"num_hidden_layers": 10**6}}, "num_hidden_layers 1,000,000"),
])
def test_absurd_configs_are_refused_before_anything_is_built(tmp_path, cfg: dict, message: str) -> None:
    with pytest.raises(PeftcalcError, match=message):
        check_config(cfg, "config.json")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["estimate", "--config", str(path)])
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1


def test_the_largest_accepted_params_still_answers() -> None:
    r = CliRunner().invoke(main, ["estimate", "--params", str(BOUNDS["params"]), "--method", "lora", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["model"]["total_params"] == BOUNDS["params"]
