"""A stand-in for bitsandbytes' quantized linear layers where bitsandbytes (or a GPU) is not available.

What is exact and what is approximated (QLoRA on CPU, traced or run):

- Storage is exact in bytes: a 4-bit NF4 weight is one uint8 tensor of ceil(out*in/2) bytes (two 4-bit codes
  per byte, as bitsandbytes packs them); its constants follow bitsandbytes' double quantization with
  blocksize 64: one uint8 absmax per 64 weights, one fp32 second-level absmax per 256 blocks, the 256-entry
  fp32 code of the second level, one fp32 offset, and the 16-entry fp32 NF4 code. 8-bit (LLM.int8) is one
  int8 byte per weight plus one fp32 scale per output row.
- The forward dequantizes the whole weight into the compute dtype, multiplies, and frees it (what
  bitsandbytes' `matmul_4bit` does per layer); backward dequantizes again to compute the input gradient.
  No activation other than what LoRA itself needs is saved. The dequantized values are a linear 4-bit grid
  scaled per block, not the NF4 code book: numbers are meaningless, shapes and bytes are those of the real thing.
- bitsandbytes' own kernels allocate small scratch buffers we do not reproduce; the dequantization here
  makes two uint8 temporaries of half the weight's size each, one at a time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BLOCK = 64  # bitsandbytes' default blocksize for 4-bit weights
BLOCK2 = 256  # blocksize of the second-level quantization of the absmax constants (double quantization)


class _Dequant4Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer):  # type: ignore[override]
        w = layer.dequantize(x.dtype)
        out = torch.nn.functional.linear(x, w)
        del w
        ctx.layer = layer
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        w = ctx.layer.dequantize(grad_out.dtype)
        return grad_out @ w, None


class QuantLinear(nn.Linear):
    """nn.Linear whose frozen weight is stored packed (nf4) or as int8; peft wraps it like any nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: str, compute_dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.format = fmt
        self.compute_dtype = compute_dtype
        n = in_features * out_features
        if fmt == "nf4":
            blocks = math.ceil(n / BLOCK)
            self.weight = nn.Parameter(torch.zeros(math.ceil(n / 2), 1, dtype=torch.uint8, device=device),
                                       requires_grad=False)
            self.register_buffer("absmax", torch.zeros(blocks, dtype=torch.uint8, device=device))
            self.register_buffer("absmax2", torch.ones(math.ceil(blocks / BLOCK2), dtype=torch.float32, device=device))
            self.register_buffer("code2", torch.zeros(256, dtype=torch.float32, device=device))
            self.register_buffer("offset", torch.zeros((), dtype=torch.float32, device=device))
            self.register_buffer("code", torch.zeros(16, dtype=torch.float32, device=device))
        elif fmt == "int8":
            self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                       requires_grad=False)
            self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        else:
            raise ValueError(f"unknown quantized weight format {fmt!r}")
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        n = self.in_features * self.out_features
        with torch.no_grad():
            if self.format == "int8":
                w = self.weight.to(dtype)
                w.mul_(self.scale.to(dtype)[:, None])
                return w
            packed = self.weight.view(-1)
            w = torch.empty(2 * packed.numel(), dtype=dtype, device=packed.device)
            w[0::2] = packed >> 4
            w[1::2] = packed & 15
            w = w[:n]
            w.sub_(7.5)
            return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Dequant4Matmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias
        return out


def quantize_linears(model: nn.Module, module_names: set[str], fmt: str, compute_dtype: torch.dtype) -> int:
    """Replace the named nn.Linear modules of `model` by QuantLinear stand-ins; returns how many were replaced."""
    replaced = 0
    for name in sorted(module_names):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, leaf)
        if isinstance(old, nn.Linear):
            fan_in, fan_out = old.in_features, old.out_features
        elif type(old).__name__ == "Conv1D":  # GPT-2's transposed linear (weight in x out); bitsandbytes
            fan_in, fan_out = old.weight.shape  # replaces it by a Linear4bit as well
        else:
            continue
        dev = old.weight.device
        new = QuantLinear(fan_in, fan_out, old.bias is not None, fmt, compute_dtype, device=dev)
        setattr(parent, leaf, new)
        replaced += 1
    return replaced
