"""quant.py against bitsandbytes itself: the bytes of each tensor a quantized weight keeps, what transformers leaves
unquantized, peft's kbit preparation, and the release behaviour keyed on --bitsandbytes-version."""

from __future__ import annotations

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.precision import get_precision
from peftcalc.quant import (KEEP_IN_FP32, Quantization, kbit_prepared, keeps_4bit_input, kept_dense, nf4_bytes,
                            parse_bitsandbytes_version, python_dequant_forward, quantized_bytes)


def _nbytes(t) -> int:
    return t.untyped_storage().nbytes()


# numels: one block, a partial block, an odd count, more than 256 blocks (two nested absmax), a real layer
@pytest.mark.parametrize("numel", [64, 100, 4097, 64 * 256 + 1, 11008 * 256])
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("storage", ["uint8", "bf16"])
def test_4bit_bytes_equal_bitsandbytes_quantize_4bit(numel, double_quant, storage):
    """Each tensor bitsandbytes.functional.quantize_4bit returns, by name, against quantized_bytes."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    if storage != "uint8" and (numel + 1) // 2 % 2:
        pytest.skip("bitsandbytes' CPU quantize_4bit cannot view an odd number of packed bytes as bf16")
    dtype = {"uint8": torch.uint8, "bf16": torch.bfloat16}[storage]
    packed, state = F.quantize_4bit(torch.randn(numel, dtype=torch.bfloat16), compress_statistics=double_quant,
                                    quant_type="nf4", quant_storage=dtype)
    expected = quantized_bytes(numel, 1, Quantization(4, "nf4", double_quant, storage))
    assert _nbytes(packed) == expected.packed
    if double_quant:
        assert _nbytes(state.absmax) + _nbytes(state.state2.absmax) == expected.scales
        assert _nbytes(state.code) + _nbytes(state.state2.code) + _nbytes(state.offset) == expected.constants
        assert state.state2.code.data_ptr() != F.name2qmap["dynamic"].data_ptr()  # a copy per weight
    else:
        assert _nbytes(state.absmax) == expected.scales
        assert _nbytes(state.code) == expected.constants


def test_the_paper_bits_per_parameter():
    """QLoRA section 3: double quantization brings the constants from 32/64 = 0.5 to 8/64 + 32/(64*256) = 0.127
    bits per parameter, 4.127 bits in all."""
    n = 64 * 256 * 1000
    assert nf4_bytes(n) * 8 / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    single = quantized_bytes(n, 1, Quantization(double_quant=False))
    assert (single.packed + single.scales) * 8 / n == pytest.approx(4.5)


def test_fp4_and_nf4_take_the_same_bytes():
    assert quantized_bytes(4096, 1, Quantization(quant_type="fp4")) == quantized_bytes(4096, 1, Quantization())


def test_8bit_bytes_equal_int8_params():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    w = bnb.nn.Int8Params(torch.randn(96, 64, dtype=torch.bfloat16), requires_grad=False,
                          has_fp16_weights=False).to("cpu")
    b = quantized_bytes(96 * 64, 96, Quantization(bits=8))
    assert (b.packed, b.scales, b.constants) == (_nbytes(w.data), _nbytes(w.SCB), 0)
    assert w.CB.data_ptr() == w.data.data_ptr()  # CB is the parameter's own storage


def test_quantization_refuses_what_bitsandbytes_does_not_have():
    for kwargs, flag in (({"bits": 3}, "--quant-bits"), ({"quant_type": "int4"}, "--quant-type"),
                         ({"storage": "int64"}, "--quant-storage")):
        with pytest.raises(PeftcalcError, match=flag):
            Quantization(**kwargs)


@pytest.mark.parametrize("family", sorted(KEEP_IN_FP32))
def test_keep_in_fp32_is_transformers_own_list(family):
    transformers = pytest.importorskip("transformers")
    cls = {"t5": transformers.T5ForConditionalGeneration, "mt5": transformers.MT5ForConditionalGeneration}[family]
    assert tuple(cls._keep_in_fp32_modules) == KEEP_IN_FP32[family]
    assert kept_dense(family, "decoder.block.{i}.layer.2.DenseReluDense.wo")
    assert not kept_dense(family, "decoder.block.{i}.layer.2.DenseReluDense.wi_0")
    assert not kept_dense("llama", "model.layers.{i}.mlp.down_proj")


def test_kbit_preparation_puts_every_parameter_in_fp32():
    """peft prepare_model_for_kbit_training: fp16/bf16 parameters -> fp32; without autocast the activations follow
    (pure bf16 -> fp32 compute); mixed recipes and amp autocast in their compute dtype (Trainer bf16=True)."""
    for name, compute in (("bf16", "fp32"), ("fp32", "fp32"), ("amp-bf16", "bf16"), ("bf16-mixed", "bf16"),
                          ("fp16-mixed", "fp16")):
        p = kbit_prepared(get_precision(name))
        assert (p.param_dtype, p.compute_dtype, p.master) == ("fp32", compute, False), name


@pytest.mark.parametrize("text, version", [("0.41.1", (0, 41, 1)), ("0.43.2", (0, 43, 2)), ("v0.50.2", (0, 50, 2)),
                                           ("0.44", (0, 44, 0)), ("0.45.0rc1", (0, 45, 0)),
                                           ("0.42.0.post1", (0, 42, 0)), ("0.47.0.dev0+cu128", (0, 47, 0))])
def test_versions_parse(text, version):
    assert parse_bitsandbytes_version(text) == version


@pytest.mark.parametrize("text", ["", "latest", "0", "0.41.1.2.3", "1.x", "0.38.1"])
def test_bad_versions_are_refused_in_one_line(text):
    with pytest.raises(PeftcalcError) as e:
        parse_bitsandbytes_version(text)
    assert "\n" not in str(e.value)


def test_which_releases_keep_the_input():
    """bitsandbytes PR #1270 is first in 0.43.2 (git tag --contains 9e75374); the gemm_4bit operator in 0.50.0."""
    assert keeps_4bit_input("0.41.1") and keeps_4bit_input("0.43.1")
    assert not keeps_4bit_input("0.43.2") and not keeps_4bit_input("0.50.2") and not keeps_4bit_input(None)
    assert python_dequant_forward("0.49.2") and not python_dequant_forward("0.50.0")
    assert not python_dequant_forward(None)


def test_setup_validates_the_version():
    from peftcalc.setup import Setup

    with pytest.raises(PeftcalcError, match="--bitsandbytes-version"):
        Setup(bitsandbytes_version="new")
    assert Setup(bitsandbytes_version="0.41.1").bitsandbytes_version == "0.41.1"
