"""Checkpoint bytes on disk: the safetensors file a task saves, for one task and for N.

A safetensors file is an 8-byte length, a JSON header naming every tensor (dtype, shape, byte offsets),
padded with spaces to a multiple of 8, then the raw data (safetensors format spec). peft saves adapter
weights in the dtype they train in (fp32) under `base_model.model.<module path>` names; full
fine-tuning saves every weight in the model's dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from peftcalc.memory import tensor_bytes
from peftcalc.methods.base import Adaptation
from peftcalc.precision import Precision

SAFETENSORS_DTYPE = {"fp32": "F32", "bf16": "BF16", "fp16": "F16", "int8": "I8"}
# The writer orders tensors by dtype (descending in safetensors' Dtype enum order), then by name; the offsets,
# and so the header's length, follow that order (safetensors/src/tensor.rs `prepare`).
SAFETENSORS_ORDER = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
                     "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class CheckpointSize:
    checkpoint_bytes: int  # one task's saved file
    full_copy_bytes: int  # one complete copy of the model in its saved dtype
    num_tasks: int

    @property
    def tasks_bytes(self) -> int:
        return self.checkpoint_bytes * self.num_tasks

    @property
    def full_copies_bytes(self) -> int:
        return self.full_copy_bytes * self.num_tasks


def _header_bytes(entries: list[tuple[str, str, tuple[int, ...], int]]) -> int:
    """Size of the JSON header safetensors writes for (name, dtype, shape, nbytes) entries, padded to 8."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in sorted(entries, key=lambda e: (-SAFETENSORS_ORDER.index(e[1]), e[0])):
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":")).encode())
    return n + (-n % 8)


@lru_cache(maxsize=1024)
def checkpoint_bytes(adaptation: Adaptation, precision: Precision) -> int:
    """Bytes of the safetensors file one task saves (header + data; adapter_config.json not counted)."""
    entries = []
    for g in adaptation.saved:
        dtype = SAFETENSORS_DTYPE[precision.stored_dtype(g.added)]
        nbytes = tensor_bytes(g, precision, adaptation)
        shape = g.shape or (g.numel,)
        # peft prefixes module paths; our bottleneck adapters and full models save plain module names
        prefix = PEFT_PREFIX if adaptation.saved_by_peft and not g.name.startswith("prompt") else ""
        suffix = "" if g.name.endswith(("weight", "bias", "embeddings", "ia3_l", "vector")) else ".weight"
        for i in range(g.count):
            entries.append((prefix + g.name.replace("{i}", str(i)) + suffix, dtype, shape, nbytes))
    data = sum(e[3] for e in entries)
    return 8 + _header_bytes(entries) + data


def checkpoint_size(adaptation: Adaptation, full_model: Adaptation, precision: Precision, num_tasks: int) -> CheckpointSize:
    return CheckpointSize(checkpoint_bytes(adaptation, precision), checkpoint_bytes(full_model, precision), num_tasks)
