"""What a training config file says, as typed data: the settings it gives peftcalc, and every field's fate.

`Settings` holds values exactly as the command-line flags carry them (`zero="3"`, `targets="q_proj,v_proj"`),
so a file and the flags merge field by field (peftcalc/configs/apply.py). `FieldUse` is one line of the "from
FILE" section: the field as written, and what it became or why it was not used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Iterator


class Status(str, Enum):
    USED = "used"  # changed the estimate's inputs
    DEFAULT = "default"  # not in the file: the framework's default, which differs from peftcalc's
    NOT_MODELLED = "not modelled"  # understood, but peftcalc does not model its effect: the estimate ignores it
    IGNORED = "ignored"  # no effect on memory, time or disk
    UNKNOWN = "not understood"  # not a field peftcalc knows for this kind of file


@dataclass(frozen=True)
class FieldUse:
    field: str  # dotted path as written in the file (fsdp_config.offload_params), or "(name)" for a default
    value: str  # the value as written, shortened
    status: Status
    detail: str  # what it became, or why it was not used
    file: str = ""  # the file it was read from
    settings: tuple[str, ...] = ()  # the settings (keyword names) it gave

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "value": self.value, "status": self.status.value, "detail": self.detail,
                "file": self.file, "settings": list(self.settings)}


@dataclass(frozen=True)
class Settings:
    """What the file sets, as command-line values (None: not set). Names are the CLI's keyword names."""

    model_name: str | None = None  # a Hugging Face id or catalogue name, resolved as --model resolves it
    method: str | None = None
    rank: int | None = None
    targets: str | None = None
    modules_to_save: str | None = None
    quant_bits: str | None = None
    quant_type: str | None = None  # bitsandbytes 4-bit code: nf4, fp4
    double_quant: bool | None = None  # bitsandbytes 4-bit: absmax quantized again
    quant_storage: str | None = None  # bitsandbytes 4-bit: the dtype holding the packed codes
    lora_dropout: float | None = None
    virtual_tokens: int | None = None
    prefix_projection: bool | None = None
    precision: str | None = None
    adapter_dtype: str | None = None
    optimizer: str | None = None
    adamw_impl: str | None = None
    optimizer_state_dtype: str | None = None
    batch: int | None = None
    seq: int | None = None
    gradient_accumulation: int | None = None
    gradient_checkpointing: bool | None = None
    reentrant_checkpointing: bool | None = None
    attention: str | None = None
    loss: str | None = None
    packing: bool | None = None
    padded: bool | None = None  # rows padded to the longest of the batch, with an attention mask
    kbit_preparation: bool | None = None
    gpus: int | None = None
    zero: str | None = None
    offload: bool | None = None
    offload_params: bool | None = None
    sharding: str | None = None  # fsdp1, fsdp2, deepspeed (Setup.sharding)
    fsdp_backward_prefetch: str | None = None  # pre, post, none
    fsdp_forward_prefetch: bool | None = None
    ds_reduce_bucket_size: int | None = None
    ds_prefetch_bucket_size: int | None = None
    ds_param_persistence_threshold: int | None = None
    ds_max_live_parameters: int | None = None
    ds_max_reuse_distance: int | None = None
    ds_auto_buckets: bool | None = None
    tp: int | None = None
    epochs: float | None = None
    steps: int | None = None

    def items(self) -> Iterator[tuple[str, Any]]:
        """The settings the file gives, as (keyword name, value)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value


SETTING_NAMES = tuple(f.name for f in fields(Settings))


@dataclass(frozen=True)
class TrainingConfig:
    """A training config read: its kind, the settings it gives, each field's fate, and what to warn about."""

    path: str
    kind: str  # axolotl, trl, torchtune, llamafactory, peft, deepspeed, accelerate
    settings: Settings
    fields: tuple[FieldUse, ...]
    warnings: tuple[str, ...] = ()
    companions: tuple[str, ...] = ()  # files it named and that were read with it (DeepSpeed JSON)
    # (field, ModelSpec.arch attribute, value): what the file says the model's shape is, checked once it is known
    expects: tuple[tuple[str, str, int], ...] = ()

    def by_status(self, status: Status) -> tuple[FieldUse, ...]:
        return tuple(f for f in self.fields if f.status is status)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "settings": dict(self.settings.items()),
                "fields": [f.to_dict() for f in self.fields], "warnings": list(self.warnings),
                "companions": list(self.companions)}
