"""Checkpoint bytes, measured: save what a task saves with safetensors and count the bytes on disk.

- peft methods: `PeftModel.save_pretrained(dir, safe_serialization=True)` (adapter_model.safetensors);
- bottleneck adapters (ours): the adapter parameters with `safetensors.torch.save_file`;
- full fine-tuning: the transformers model's `save_pretrained(dir, safe_serialization=True)` (all shards).

`checkpoint_bytes` counts the *.safetensors files only (the small JSON configs beside them are not
weights). On fake tensors nothing can be written, so `state_dict_file_bytes` computes the size of the file
safetensors would write for the same state dict — 8-byte length, JSON header in safetensors' order (dtype
descending in its enum order, then name), padded to 8, then the data — and the tests check the two agree.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftcalc.checkpoint import SAFETENSORS_ORDER as _ST_ORDER  # the writer's order, one home

_ST_NAME = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
            torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64",
            torch.int64: "I64"}


def safetensors_file_bytes(entries: list[tuple[str, torch.dtype, tuple[int, ...], int]],
                           metadata: dict[str, str] | None = None) -> int:
    """Size of the safetensors file for (name, dtype, shape, nbytes) entries."""
    ordered = sorted(entries, key=lambda e: (-_ST_ORDER.index(_ST_NAME[e[1]]), e[0]))
    header: dict[str, Any] = {"__metadata__": metadata if metadata is not None else {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in ordered:
        header[name] = {"dtype": _ST_NAME[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + n + (-n % 8) + offset


def _dedup(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop entries sharing storage with an earlier one (tied weights are written once)."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        key = v.untyped_storage()._cdata
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def saved_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors one task's checkpoint holds, under the names the writer uses: peft's adapter state; else,
    with frozen weights (our bottleneck adapters), the trainable ones; else (full fine-tuning) the model."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        state = None
        if any(type(p).__name__ in ("Params4bit", "Int8Params") or hasattr(p, "quant_state") or hasattr(p, "SCB")
               for p in model.parameters()):
            # a bitsandbytes base: its own state_dict serializes every QuantState (data-dependent on fake tensors,
            # and never in an adapter checkpoint); peft picks the adapter's tensors from parameters and buffers
            state = dict(model.named_parameters()) | dict(model.named_buffers())
        return dict(get_peft_model_state_dict(model, state_dict=state))
    if not all(p.requires_grad for p in model.parameters()):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    return _dedup(model.state_dict())


def state_dict_file_bytes(model: nn.Module) -> int:
    """The safetensors bytes one task's checkpoint would take (works on fake tensors). For full fine-tuning
    this is one unsharded file: transformers shards at 50 GB, adding a header per shard (a few KB)."""
    state = saved_state_dict(model)
    entries = [(k, v.dtype, tuple(v.shape), v.numel() * v.element_size()) for k, v in state.items()]
    return safetensors_file_bytes(entries)


def save_checkpoint(model: nn.Module, directory: str | Path | None = None) -> int:
    """Write the checkpoint of one task with safetensors; returns the bytes of the *.safetensors files."""
    with tempfile.TemporaryDirectory(prefix="peftcalc-ckpt-") as tmp:
        out = Path(directory) if directory is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "peft_config") or all(p.requires_grad for p in model.parameters()):
            model.save_pretrained(str(out), safe_serialization=True)
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in saved_state_dict(model).items()}
            save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        return sum(f.stat().st_size for f in out.rglob("*.safetensors"))
