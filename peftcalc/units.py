"""Data types, their sizes, and the two byte units. The only place (with render.py) that knows GB from GiB."""

from __future__ import annotations

from enum import Enum

GB = 10**9  # decimal gigabyte, as cloud providers and the seed document use
GiB = 2**30  # binary gibibyte, as nvidia-smi and torch.cuda report

UNITS: dict[str, int] = {"GB": GB, "GiB": GiB}

# Bytes per element of each dtype a training run stores. Quantized formats carry their constants
# separately (see quant.py); here they are the packed data alone.
DTYPE_BYTES: dict[str, int] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype` (fp32, bf16, fp16, int8, uint8, int32, int64, bool)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


class Unit(str, Enum):
    GB = "GB"
    GiB = "GiB"

    @property
    def bytes(self) -> int:
        return UNITS[self.value]
