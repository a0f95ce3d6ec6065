"""One published GPU-memory measurement (a line of bench/published/memory/*.jsonl), typed and checked.

The schema is bench/published/README.md's; `PublishedRecord.from_dict` checks every key, its type and its
allowed values, and names the file, the line and the field of the first problem:

    >>> PublishedRecord.from_dict({...}, "bench/published/memory/litgpt.jsonl:3")   # doctest: +SKIP
    PeftcalcError: bench/published/memory/litgpt.jsonl:3: field 'unit': 'gigabytes' is not one of bytes, GB, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from peftcalc.errors import PeftcalcError

Quantity = Literal["max_allocated", "peak_active", "max_reserved", "reserved_p99", "device_used", "not_stated"]
QUANTITIES: tuple[str, ...] = Quantity.__args__  # type: ignore[attr-defined]
CONFIDENCES = ("high", "medium", "low")
UNIT_BYTES = {"bytes": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
SEQ_KINDS = ("fixed", "packed", "up-to", "max", "padded-to-max")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed")
ATTENTIONS = ("sdpa", "flash_attention_2", "eager", "framework-native")
LOSSES = ("standard", "liger-fused", "chunked")
SHARDINGS = ("none", "ddp", "fsdp", "fsdp-offload", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload")
FRAMEWORKS = ("transformers+peft", "transformers", "trl", "torchtune", "litgpt")
KEYS = ("id", "source", "confidence", "confidence_reason", "framework", "model", "method", "quantization", "precision",
        "precision_quote", "optimizer", "gradient_checkpointing", "checkpointing_detail", "attention", "batch_size",
        "gradient_accumulation_steps", "seq_len", "seq_len_kind", "loss", "gpus", "sharding", "gpu_model", "value",
        "unit", "unit_note", "quantity", "quantity_evidence", "notes")


@dataclass(frozen=True)
class SourceRef:
    kind: str  # "repository" or "web"
    repository: str | None
    path: str | None
    commit: str | None
    url: str
    quote: str  # the source's words, containing the value
    retrieved: str


@dataclass(frozen=True)
class QuantRef:
    library: str  # bitsandbytes, torchao, auto_gptq
    bits: int | None
    quant_type: str | None  # nf4, fp4, gptq
    double_quant: bool | None
    compute_dtype: str | None


@dataclass(frozen=True)
class PublishedRecord:
    """A published measurement and the setup its source states (None: not stated)."""

    id: str
    where: str  # "file:line" it was read from
    source: SourceRef
    confidence: str
    framework: str
    versions: Mapping[str, str] = field(compare=False)
    hf_id: str | None
    model_name: str
    method: str
    method_config: Mapping[str, Any] = field(compare=False)
    quantization: QuantRef | None
    precision: str | None
    optimizer: str | None
    gradient_checkpointing: bool | None
    attention: str | None
    batch_size: int | None
    gradient_accumulation_steps: int | None
    seq_len: int | None
    seq_len_kind: str | None
    loss: str | None
    gpus: int | None
    sharding: str | None
    gpu_model: str | None
    value: float
    unit: str
    quantity: str
    notes: str
    checkpointing_detail: str = ""
    quantity_evidence: str = ""
    precision_quote: str = ""

    @property
    def value_bytes(self) -> int:
        """The printed value in bytes (GB = 10^9, GiB = 2^30, as the record's unit says)."""
        return round(self.value * UNIT_BYTES[self.unit])

    @property
    def group(self) -> str:
        """Whose model code ran: "transformers" (transformers + peft, and the tools built on them), or the
        framework's own (torchtune, litgpt), which README and report show separately."""
        return self.framework if self.framework in ("torchtune", "litgpt") else "transformers"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "PublishedRecord":
        return _parse(_Checker(d, where))


class _Checker:
    """Reads fields of one JSON object, raising a one-line error naming the file, line and field."""

    def __init__(self, d: Any, where: str) -> None:
        if not isinstance(d, dict):
            raise PeftcalcError(f"{where}: a record must be a JSON object, got {type(d).__name__}")
        missing = [k for k in KEYS if k not in d]
        if missing:
            raise PeftcalcError(f"{where}: field {missing[0]!r} is missing")
        extra = [k for k in d if k not in KEYS]
        if extra:
            raise PeftcalcError(f"{where}: field {extra[0]!r} is not in the schema (bench/published/README.md)")
        self.d, self.where = d, where

    def fail(self, name: str, problem: str) -> PeftcalcError:
        return PeftcalcError(f"{self.where}: field {name!r}: {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], optional: bool = False, obj: Mapping | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
        v = (self.d if obj is None else obj).get(name)
        if v is None:
            if optional:
                return None
            raise self.fail(name, "must be given")
        if isinstance(v, bool) and kind in (int, float, (int, float)):
            raise self.fail(name, f"must be a number, got {v!r}")
        if not isinstance(v, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(name, f"must be {names}, got {v!r}")
        if choices is not None and v not in choices and not (isinstance(v, str) and v.startswith("other:")):
            raise self.fail(name, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def positive(self, name: str, optional: bool = True) -> int | None:
        v = self.get(name, int, optional)
        if v is not None and v <= 0:
            raise self.fail(name, f"must be positive, got {v}")
        return v


def _parse(c: _Checker) -> PublishedRecord:
    d = c.d
    rid = c.get("id", str)
    value = c.get("value", (int, float))
    if value <= 0:
        raise c.fail("value", f"must be positive, got {value}")
    fw = c.get("framework", dict)
    name = c.get("name", str, obj=fw, choices=FRAMEWORKS)
    versions = c.get("versions", dict, optional=True, obj=fw) or {}
    model = c.get("model", dict)
    method = c.get("method", dict)
    return PublishedRecord(
        id=rid, where=c.where, source=_source(c), confidence=c.get("confidence", str, choices=CONFIDENCES),
        framework=name, versions={str(k): str(v) for k, v in versions.items()},
        hf_id=c.get("hf_id", str, optional=True, obj=model), model_name=c.get("name", str, obj=model),
        method=c.get("name", str, obj=method), method_config=dict(c.get("config", dict, optional=True, obj=method) or {}),
        quantization=_quantization(c), precision=c.get("precision", str, True, choices=PRECISIONS),
        optimizer=c.get("optimizer", str, True), gradient_checkpointing=c.get("gradient_checkpointing", bool, True),
        attention=c.get("attention", str, True, choices=ATTENTIONS), batch_size=c.positive("batch_size"),
        gradient_accumulation_steps=c.positive("gradient_accumulation_steps"), seq_len=c.positive("seq_len"),
        seq_len_kind=c.get("seq_len_kind", str, True, choices=SEQ_KINDS), loss=c.get("loss", str, True, choices=LOSSES),
        gpus=c.positive("gpus"), sharding=c.get("sharding", str, True, choices=SHARDINGS),
        gpu_model=c.get("gpu_model", str, True), value=float(value), unit=c.get("unit", str, choices=tuple(UNIT_BYTES)),
        quantity=c.get("quantity", str, choices=QUANTITIES), notes=str(d.get("notes") or ""),
        checkpointing_detail=str(d.get("checkpointing_detail") or ""),
        quantity_evidence=str(d.get("quantity_evidence") or ""), precision_quote=str(d.get("precision_quote") or ""))


def _source(c: _Checker) -> SourceRef:
    s = c.get("source", dict)
    return SourceRef(kind=c.get("kind", str, obj=s, choices=("repository", "web")),
                     repository=c.get("repository", str, True, obj=s), path=c.get("path", str, True, obj=s),
                     commit=c.get("commit", str, True, obj=s), url=c.get("url", str, obj=s),
                     quote=c.get("quote", str, obj=s), retrieved=c.get("retrieved", str, obj=s))


def _quantization(c: _Checker) -> QuantRef | None:
    q = c.get("quantization", dict, optional=True)
    if q is None:
        return None
    bits = c.get("bits", int, True, obj=q)
    return QuantRef(library=c.get("library", str, obj=q), bits=bits, quant_type=c.get("quant_type", str, True, obj=q),
                    double_quant=c.get("double_quant", bool, True, obj=q),
                    compute_dtype=c.get("compute_dtype", str, True, obj=q))
