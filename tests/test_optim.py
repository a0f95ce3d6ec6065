"""Optimizer state bytes against the states real torch/transformers optimizers create after one step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from peftcalc.measure.hf_model import build_model  # noqa: E402
from peftcalc.memory import model_states  # noqa: E402
from peftcalc.methods import make_method  # noqa: E402
from peftcalc.model.catalogue import get_model, model_names  # noqa: E402
from peftcalc.model.hf_config import spec_from_config  # noqa: E402
from peftcalc.precision import get_precision  # noqa: E402

TINY = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128),
    "t5": dict(model_type="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=128),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64),
}


def _optimizer(name, params):
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=False)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False)
    raise AssertionError(name)


def _state_bytes(opt) -> int:
    """Every tensor the optimizer keeps, AdamW's 0-dim fp32 `step` included (the traced step counts it)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if torch.is_tensor(v))


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "sgd-momentum", "adafactor"])
def test_state_bytes_match_a_real_step(family, optimizer):
    spec = spec_from_config(TINY[family], "tiny", "test")
    model = build_model(spec, device="cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = _optimizer(optimizer, params)
    opt.step()
    predicted = model_states(make_method("full").adapt(spec), get_precision("fp32"), optimizer).optimizer_state_bytes
    assert predicted == _state_bytes(opt)


@pytest.mark.parametrize("name", model_names())
def test_declared_shapes_agree_with_counts(name):
    spec = get_model(name)
    for p in spec.others:
        if p.shape:
            n = 1
            for d in p.shape:
                n *= d
            assert n == p.numel, p.name
