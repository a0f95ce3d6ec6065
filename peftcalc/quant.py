"""Bytes of a weight stored quantized by bitsandbytes, as QLoRA stores its frozen base.

NF4 with double quantization (Dettmers et al. 2023, arXiv:2305.14314, section 3): 4-bit codes, one absmax
per block of 64 weights quantized to 8 bits, and one fp32 absmax per 256 such blocks:
4 + 8/64 + 32/(64*256) = 4.127 bits per weight. The few hundred bytes of per-tensor constants (code
tables, offsets) are left out. LLM.int8 (Dettmers et al. 2022): one byte per weight plus an fp32 scale per
output row.
"""

from __future__ import annotations

NF4_BLOCK = 64
NF4_NESTED_BLOCK = 256


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def nf4_bytes(numel: int) -> int:
    """Packed NF4 data + 8-bit block absmax + fp32 absmax of the absmax, for one tensor."""
    blocks = _ceil_div(numel, NF4_BLOCK)
    return _ceil_div(numel, 2) + blocks + 4 * _ceil_div(blocks, NF4_NESTED_BLOCK)


def int8_bytes(numel: int, rows: int) -> int:
    """LLM.int8 weight: int8 values + one fp32 scale per output row."""
    return numel + 4 * rows
