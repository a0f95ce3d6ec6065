"""The bitsandbytes-quantized base of the measured step, loaded as transformers loads it, and peft's preparation.

Real tensors: the model of the spec is built with random weights, its state dict handed to the model class's
`from_pretrained(None, config=..., state_dict=..., quantization_config=BitsAndBytesConfig(...))` — transformers'
own loading path (module replacement by `replace_with_bnb_linear`, what it leaves unquantized, the dtype plan,
`Bnb4bitQuantize`/`Bnb8bitQuantize` per weight), with no file and no download.

Fake tensors (the traced backend): the same call on the `meta` device gives the model with bitsandbytes' modules
and unquantized meta weights; `fake_quantized` then quantizes each weight with bitsandbytes' own
`functional.quantize_4bit` / `int8_vectorwise_quant`, whose fake kernels (bitsandbytes/_ops.py `register_fake`)
give the packed codes and statistics their real shapes and dtypes. One difference, stated in the result: a
`Params4bit`/`Int8Params` cannot wrap a FakeTensor (`Tensor._make_subclass`), so the traced weight is a plain
`nn.Parameter` of the same storage carrying the same `quant_state` / `CB`/`SCB` attributes, which is all that
bitsandbytes' forward and backward read. The step then runs bitsandbytes' real Python code (Linear4bit,
MatMul4Bit, dequantize_4bit, MatMul8bitFp) with fake kernels. Scratch memory inside one bitsandbytes operation
(a whole weight dequantized inside `gemm_4bit`) is invisible to both the traced and the run backend's
dispatch-level meter: `peftcalc/measure/allocator.py` measures it at the allocator.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from peftcalc.methods.base import Adaptation
from peftcalc.quant import Quantization

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "uint8": torch.uint8}

TRACED_NOTE = ("bitsandbytes on fake tensors: its quantize/dequantize/gemm_4bit operators run through their "
               "registered fake kernels; each quantized weight is an nn.Parameter carrying bitsandbytes' QuantState "
               "(a Params4bit cannot wrap a fake tensor); scratch inside one bitsandbytes operation is not seen here "
               "(see peftcalc/measure/allocator.py)")


def bnb_config(q: Quantization, compute_dtype: str) -> Any:
    """transformers' BitsAndBytesConfig for `q`; the 4-bit compute dtype is the recipe's compute dtype
    (bitsandbytes' Linear4bit switches to the input's dtype anyway when that is fp32 or bf16: set_compute_type)."""
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=TORCH_DTYPES[compute_dtype],
                              bnb_4bit_quant_storage=TORCH_DTYPES[q.storage])


def load_quantized(dense: nn.Module, q: Quantization, dtype: torch.dtype, compute_dtype: str,
                   device: str | torch.device, quantized: set[str]) -> nn.Module:
    """`dense` (the transformers model of the spec, built on `device` or on meta) loaded again through
    from_pretrained with a BitsAndBytesConfig. On meta the weights stay unquantized (`fake_quantized` does it):
    the 8-bit ones are left out of the state dict there (Bnb8bitQuantize copies each weight to the CPU), and the
    dense model's tied weights are tied again (from_pretrained does not tie meta tensors)."""
    state = dense.state_dict()
    meta = str(device) == "meta"
    if meta and q.bits == 8:
        state = {k: v for k, v in state.items() if k.removesuffix(".weight") not in quantized}
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the weights left out on meta are reported as missing: expected
    hf_logging.disable_progress_bar()
    try:
        model = type(dense).from_pretrained(None, config=dense.config, state_dict=state, dtype=dtype,
                                            device_map={"": str(device)},
                                            quantization_config=bnb_config(q, compute_dtype))
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    del state
    # from_pretrained(None, ...) names the model "None", which peft would later look up on the Hub (a network
    # call) when it saves the adapter: keep the from-config model's empty name
    model.config._name_or_path = dense.config._name_or_path
    model.name_or_path = dense.name_or_path
    if meta:
        _tie_as(dense, model)
    return model


def _tie_as(dense: nn.Module, model: nn.Module) -> None:
    """Share parameters in `model` exactly where `dense` shares them."""
    first: dict[int, str] = {}
    for name, p in dense.named_parameters(remove_duplicate=False):
        if id(p) not in first:
            first[id(p)] = name
            continue
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(first[id(p)]))


def prepare_kbit(model: nn.Module, setup: Any) -> nn.Module:
    """peft's prepare_model_for_kbit_training as users call it: use_gradient_checkpointing as the setup says
    (peft's default True), with no checkpointing kwargs when the setup asks for no checkpointing of its own (torch
    then picks the reentrant variant), else with its use_reentrant."""
    from peft import prepare_model_for_kbit_training

    kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": setup.reentrant_checkpointing}} \
        if setup.gradient_checkpointing else {}
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=setup.kbit_gradient_checkpointing,
                                           **kwargs)


BNB_LINEARS = ("Linear4bit", "Linear8bitLt")


def is_bnb_weight(module: nn.Module, name: str) -> bool:
    """The weight of one of bitsandbytes' quantized linears."""
    return name == "weight" and type(module).__name__ in BNB_LINEARS


@contextlib.contextmanager
def fake_code_tables(mode: Any) -> Iterator[None]:
    """bitsandbytes caches its 8-bit dynamic code in a module dict (`functional.name2qmap`) and builds it with
    data-dependent Python: give the quantization under `mode` a fake copy, and put the real cache back."""
    import bitsandbytes.functional as F

    saved = dict(F.name2qmap)
    F.name2qmap["dynamic"] = mode.from_tensor(F.create_dynamic_map())
    try:
        yield
    finally:
        F.name2qmap.clear()
        F.name2qmap.update(saved)


def fake_quantized(module: nn.Module, p: nn.Parameter, device: str) -> nn.Parameter:
    """Inside FakeTensorMode (and `fake_code_tables`): the meta weight `p` of a Linear4bit/Linear8bitLt `module`
    quantized by bitsandbytes' own functions on a fake dense weight of its shape and dtype (see the module
    docstring). (On meta an 8-bit weight is a plain Parameter: it was not in the state dict.)"""
    import bitsandbytes.functional as F

    dense = torch.empty(p.shape, dtype=p.dtype, device=device)
    if type(module).__name__ == "Linear4bit":
        packed, state = F.quantize_4bit(dense, blocksize=p.blocksize, compress_statistics=p.compress_statistics,
                                        quant_type=p.quant_type, quant_storage=p.quant_storage)
        out = nn.Parameter(packed, requires_grad=False)
        out.quant_state = state  # type: ignore[attr-defined]
        out.bnb_quantized = True  # type: ignore[attr-defined]
        module.quant_state = state  # type: ignore[assignment]
        return out
    # Int8Params._quantize: the weight in fp16, then row-wise int8 with one fp32 scale per row
    cb, scb, _ = F.int8_vectorwise_quant(dense.to(torch.float16))
    out = nn.Parameter(cb, requires_grad=False)
    out.CB, out.SCB = cb, scb  # type: ignore[attr-defined]
    out.has_fp16_weights = False  # type: ignore[attr-defined]
    return out


def quant_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside its quantized parameters (not parameters or buffers): each 4-bit
    weight's QuantState (absmax, code, offset, and the nested state's absmax and code); each 8-bit layer's
    row scales (SCB, on the weight before the first forward, on the layer's MatmulLtState after)."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        state = getattr(weight, "quant_state", None) or getattr(module, "quant_state", None)
        while state is not None:
            out += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
            state = state.state2
        for holder in (weight, getattr(module, "state", None)):
            for name in ("SCB", "CB"):
                t = getattr(holder, name, None) if holder is not None else None
                if isinstance(t, torch.Tensor):
                    out.append(t)
    return out


def quantized_modules(adaptation: Adaptation) -> set[str]:
    """Module names (templates expanded) of the weights the adaptation stores quantized."""
    names: set[str] = set()
    for g in adaptation.tensors:
        if g.format != "dense":
            base = g.name.removesuffix(".weight")
            names |= {base.replace("{i}", str(i)) for i in range(g.count)} if "{i}" in base else {base}
    return names


@contextlib.contextmanager
def bitsandbytes_release(version: str | None) -> Iterator[str | None]:
    """Run MatMul4Bit as the bitsandbytes release `version` did (None: as installed). Before 0.50.0 its forward
    dequantized the weight in Python and called F.linear; before 0.43.2 it also kept its input A for backward
    (PR #1270). Reproduced from bitsandbytes' autograd/_functions.py at tag 0.43.1 (and 0.49.0), on the installed
    release's functions and kernels; yields a note saying so, or None when nothing is replaced."""
    from peftcalc.quant import keeps_4bit_input, python_dequant_forward

    if not python_dequant_forward(version):
        yield None
        return
    import bitsandbytes.autograd._functions as bnb_functions

    cls = _matmul_4bit_before_050(keeps_4bit_input(version))
    original = bnb_functions.MatMul4Bit
    bnb_functions.MatMul4Bit = cls
    try:
        yield (f"MatMul4Bit as bitsandbytes {version} had it (forward: F.linear on the weight dequantized in Python; "
               f"ctx.tensors = {'(A, B)' if keeps_4bit_input(version) else '(None, B)'}), reproduced on the installed "
               "release's kernels")
    finally:
        bnb_functions.MatMul4Bit = original


def _matmul_4bit_before_050(keep_input: bool) -> type:
    import bitsandbytes.functional as F

    class MatMul4BitBefore050(torch.autograd.Function):
        """bitsandbytes' MatMul4Bit before 0.50.0 (autograd/_functions.py at tag 0.43.1 / 0.49.0)."""

        @staticmethod
        def forward(ctx, A, B, out=None, bias=None, quant_state=None):  # type: ignore[override]
            output = torch.nn.functional.linear(A, F.dequantize_4bit(B, quant_state).to(A.dtype), bias)
            ctx.state = quant_state
            ctx.dtype_A, ctx.dtype_bias = A.dtype, None if bias is None else bias.dtype
            ctx.tensors = (A if keep_input else None, B) if any(ctx.needs_input_grad[:2]) else (None, None)
            return output

        @staticmethod
        def backward(ctx, grad_output):  # type: ignore[override]
            req_grad_a, _, _, req_grad_bias, _ = ctx.needs_input_grad
            _, B = ctx.tensors
            grad_bias = grad_output.sum(0, dtype=ctx.dtype_bias) if req_grad_bias else None
            grad_a = None
            if req_grad_a:
                grad_a = torch.matmul(grad_output, F.dequantize_4bit(B, ctx.state).to(grad_output.dtype))
            return grad_a, None, None, grad_bias, None

    return MatMul4BitBefore050
