"""One prediction of a run, used by measure, validate and the report alike; a suite's run keys and the typed
request are the same thing."""

from __future__ import annotations

import dataclasses

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.estimate import estimate_method
from peftcalc.methods import MethodOptions, make_method
from peftcalc.model.catalogue import get_model
from peftcalc.results.files import Record
from peftcalc.results.predict import predict, request_of
from peftcalc.results.request import DEFAULTS, RunRequest
from peftcalc.setup import Setup


def test_predict_counts_what_the_meter_counts():
    """Weights are parameters + buffers + master copies (the meter sees every storage); the peak has no overhead."""
    spec, setup = get_model("qwen2.5-0.5b"), Setup(precision="bf16-mixed", seq_len=128)
    method = make_method("lora")
    m = estimate_method(spec, method, setup).memory
    p = predict(spec, method, setup)
    assert m.buffer_bytes > 0  # rotary inv_freq: the case the copies once disagreed on
    assert p.bytes.weights == m.weight_bytes + m.buffer_bytes + m.master_weight_bytes
    assert p.bytes.peak == m.peak_bytes == m.total - m.overhead_bytes
    assert p.overhead_bytes == m.overhead_bytes and p.peak_phase == m.peak_phase


def test_run_keys_round_trip():
    keys = {"model": "gpt2", "method": "lora", "seq": 128, "rank": 4, "targets": "c_attn,c_proj", "nproc": 2,
            "zero": 3, "backend": "run"}
    r = RunRequest.from_keys(keys)
    assert r.setup.num_gpus == 2 and r.options.targets == ("c_attn", "c_proj")
    assert RunRequest.from_keys(r.keys()) == r
    assert set(r.keys()) == {"model", "method", *DEFAULTS}
    assert r.label == "gpt2 lora bf16 b1xs128 foreach nproc2 zero3"


@pytest.mark.parametrize("keys,message", [({"model": "gpt2"}, "needs a method"),
                                          ({"model": "gpt2", "method": "lora", "sequence": 1}, "unknown run key")])
def test_bad_run_keys(keys, message):
    with pytest.raises(PeftcalcError, match=message):
        RunRequest.from_keys(keys)


def test_a_result_without_its_suite_run_is_rebuilt_from_its_setup_and_options():
    """`peftcalc measure --json` output has no "run": the method options recorded in detail stand for it."""
    setup = Setup(precision="bf16", seq_len=64)
    d = {"backend": "trace", "device": "cpu (fake tensors)", "status": "ok",
         "model": {"name": "gpt2", "family": "gpt2", "kind": "decoder", "total_params": 1, "source": "x"},
         "setup": dataclasses.asdict(setup), "method": "qlora",
         "detail": {"method_options": {"rank": 4, "targets": ["c_attn"], "base_storage": "int8"}}}
    req = request_of(Record.from_dict(d))
    assert req.setup == setup and req.model == "gpt2"
    assert req.options == MethodOptions(rank=4, targets=("c_attn",), quant_bits=8)
