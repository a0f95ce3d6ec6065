"""The GPU catalogue: one JSON file per GPU under gpus/, with its datasheet and price sources.

Every quantity is an integer whose unit is in its name (`memory_bytes`, `bf16_flops_per_s`, ...), except
the hourly rent in US dollars. FLOP/s are dense (no 2:4 sparsity) tensor-core peaks from the vendor's
datasheet; a value that does not exist (bf16 on a T4) is null, never a sentinel. `memory_bytes` is the
capacity as marketed, in bytes (HBM and GDDR capacities are binary: "80 GB" is 80 GiB);
`usable_memory_bytes` is what a training process can allocate, and each file says how it was derived.

Users add or override entries with their own JSON file (one object or a list of them), validated here so
that a typo fails with the file, the entry and the field named rather than a KeyError later on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from peftcalc.errors import PeftcalcError
from peftcalc.hardware.schema import check_dates, check_fields, check_id, entries, entry_label, read_json

GPU_DIR = Path(__file__).with_name("gpus")
# The months the catalogue's prices were brought to (2026-12-01): six months back. Older prices are kept at their own
# date with their source saying why, and `peftcalc gpus` marks them.
PRICE_WINDOW = ("2026-06", "2026-12")

StrPath = Union[str, "PathLike[str]"]


@dataclass(frozen=True)
class Gpu:
    id: str  # short lower-case key: "h100-80gb"
    name: str
    vendor: str  # "nvidia", "amd", "apple"
    family: str  # "hopper", "ampere", "ada", "volta", "turing", "blackwell", "cdna3", "apple-m"
    memory_bytes: int  # capacity as marketed, in bytes (binary for HBM/GDDR/Apple: 80 GB = 80 GiB)
    memory_note: str
    usable_memory_bytes: int  # what a training process can allocate (before its own CUDA context)
    usable_note: str
    bf16_flops_per_s: int | None  # dense tensor peak; None where the GPU has no bf16
    fp16_flops_per_s: int | None  # dense tensor peak, fp32 accumulate
    fp32_flops_per_s: int  # non-tensor fp32 peak
    memory_bandwidth_bytes_per_s: int
    interconnect: str  # human text: "NVLink 4, 900 GB/s"
    interconnect_bytes_per_s: int | None  # bidirectional aggregate per GPU, as NVIDIA quotes NVLink
    rent_usd_per_hour: float | None  # typical on-demand price per GPU-hour; None where nobody rents it hourly
    rent_date: str | None  # YYYY-MM
    rent_source: str
    purchase_usd: int | None  # typical street price per GPU (per machine for Apple)
    purchase_date: str | None  # YYYY-MM
    purchase_source: str
    source: str  # datasheet URL
    tdp_watts: int
    notes: str = ""
    # measured achievable dense matmul rate (best shape, torch.mm), where a public measurement exists; None: not measured
    matmul_bf16_flops_per_s: int | None = None
    matmul_fp16_flops_per_s: int | None = None
    matmul_source: str = ""  # the table and the row quoted

    def flops_per_s(self, dtype: str) -> int | None:
        """Dense peak for `dtype` ("bf16", "fp16", "fp32"); None where the GPU lacks it."""
        try:
            return {"bf16": self.bf16_flops_per_s, "fp16": self.fp16_flops_per_s, "fp32": self.fp32_flops_per_s}[dtype]
        except KeyError:
            raise ValueError(f"no peak FLOP/s for dtype {dtype!r}; known: bf16, fp16, fp32") from None


# field -> (accepted JSON types, nullable, required in a user file, must be > 0 rather than >= 0)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool, bool, bool]] = {
    "id": ((str,), False, True, False),
    "name": ((str,), False, True, False),
    "vendor": ((str,), False, False, False),
    "family": ((str,), False, False, False),
    "memory_bytes": ((int,), False, True, True),
    "memory_note": ((str,), False, False, False),
    "usable_memory_bytes": ((int,), False, True, True),
    "usable_note": ((str,), False, False, False),
    "bf16_flops_per_s": ((int,), True, True, True),
    "fp16_flops_per_s": ((int,), True, True, True),
    "fp32_flops_per_s": ((int,), False, True, True),
    "memory_bandwidth_bytes_per_s": ((int,), False, True, True),
    "interconnect": ((str,), False, False, False),
    "interconnect_bytes_per_s": ((int,), True, False, True),
    "rent_usd_per_hour": ((int, float), True, False, False),
    "rent_date": ((str,), True, False, False),
    "rent_source": ((str,), False, False, False),
    "purchase_usd": ((int,), True, False, False),
    "purchase_date": ((str,), True, False, False),
    "purchase_source": ((str,), False, False, False),
    "source": ((str,), False, False, False),
    "tdp_watts": ((int,), True, False, True),
    "notes": ((str,), False, False, False),
    "matmul_bf16_flops_per_s": ((int,), True, False, True),
    "matmul_fp16_flops_per_s": ((int,), True, False, True),
    "matmul_source": ((str,), False, False, False),
}
assert set(_SCHEMA) == {f.name for f in fields(Gpu)}

def _validate(raw: Any, origin: str, index: int | None, *, strict: bool) -> Gpu:
    """A Gpu from one JSON object; `strict` (built-in files) requires every field to be present."""
    label = f"{origin}: {entry_label(raw, index)}"
    values = check_fields(raw, _SCHEMA, label, strict=strict, what="GPU")
    if "source" not in raw:
        values["source"] = "user file"
    if values["rent_usd_per_hour"] is not None:
        values["rent_usd_per_hour"] = float(values["rent_usd_per_hour"])
    check_id(values["id"], label, "h100-80gb")
    check_dates(values, ("rent_date", "purchase_date"), label)
    if values["usable_memory_bytes"] > values["memory_bytes"]:
        raise PeftcalcError(
            f"{label}: field 'usable_memory_bytes' ({values['usable_memory_bytes']}) exceeds "
            f"'memory_bytes' ({values['memory_bytes']})"
        )
    return Gpu(**values)


def _read_json(path: Path) -> Any:
    return read_json(path, "GPU")


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Gpu]:
    gpus = {}
    for path in sorted(GPU_DIR.glob("*.json")):
        gpu = _validate(_read_json(path), str(path), None, strict=True)
        if gpu.id != path.stem:
            raise RuntimeError(f"{path}: id {gpu.id!r} does not match the file name")
        gpus[gpu.id] = gpu
    return gpus


def gpu_ids() -> list[str]:
    """The built-in GPU ids, sorted."""
    return list(_builtin())


def all_gpus() -> list[Gpu]:
    """The built-in GPUs, sorted by id."""
    return list(_builtin().values())


def get_gpu(gpu_id: str, catalogue: Mapping[str, Gpu] | None = None) -> Gpu:
    """The GPU `gpu_id` (case-insensitive) from `catalogue` (default: the built-ins); unknown ids fail
    with the closest ones."""
    gpus = _builtin() if catalogue is None else catalogue
    key = gpu_id.strip().lower()
    if key in gpus:
        return gpus[key]
    contains = [k for k in gpus if key and key in k]  # "h100" -> h100-80gb, h100-pcie first
    close = list(dict.fromkeys(contains + difflib.get_close_matches(key, list(gpus), n=5, cutoff=0.4)))[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PeftcalcError(f"unknown GPU {gpu_id!r}{hint} (`peftcalc gpus` lists them all)")


def load_gpu_file(path: StrPath) -> list[Gpu]:
    """The GPUs in a user's JSON file: one object, or a list of them. Fails with the file, entry and field."""
    p = Path(path)
    gpus = [_validate(item, str(p), i, strict=False) for item, i in entries(_read_json(p), p, "GPU")]
    seen: set[str] = set()
    for gpu in gpus:
        if gpu.id in seen:
            raise PeftcalcError(f"{p}: GPU id {gpu.id!r} appears more than once")
        seen.add(gpu.id)
    return gpus


def catalogue_with(files: Iterable[StrPath]) -> dict[str, Gpu]:
    """The built-in GPUs plus those in `files`; a user entry replaces a built-in (or earlier file's) entry
    with the same id."""
    gpus = dict(_builtin())
    for path in files:
        for gpu in load_gpu_file(path):
            gpus[gpu.id] = gpu
    return gpus
