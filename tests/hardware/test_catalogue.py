"""The GPU catalogue: every file loads and validates, spot checks against vendor datasheets, user files."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.hardware.catalogue import (
    GPU_DIR,
    Gpu,
    all_gpus,
    catalogue_with,
    get_gpu,
    gpu_ids,
    load_gpu_file,
)
from peftcalc.units import GB, GiB

TERA = 10**12
REQUIRED_IDS = {
    "h200", "h100-80gb", "h100-pcie", "a100-80gb", "a100-40gb", "l40s", "a6000", "rtx-6000-ada", "rtx-4090",
    "rtx-3090", "a10g", "l4", "t4", "v100-16gb", "v100-32gb", "mi300x", "m2-ultra-192gb", "m3-ultra-512gb",
}  # fmt: skip
FIELD_NAMES = [f.name for f in fields(Gpu)]


# --- the built-in files ---------------------------------------------------------------------------------


def test_required_gpus_present():
    assert REQUIRED_IDS <= set(gpu_ids())


def test_ids_match_file_names_and_files_have_every_field():
    files = sorted(GPU_DIR.glob("*.json"))
    assert [p.stem for p in files] == gpu_ids()
    for path in files:
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert raw["id"] == path.stem
        assert list(raw) == FIELD_NAMES, f"{path.name}: fields missing, extra or out of order"


def test_every_file_reloads_as_a_user_file():
    """The user-file validator accepts every built-in entry unchanged (one validator for both)."""
    for path in sorted(GPU_DIR.glob("*.json")):
        (gpu,) = load_gpu_file(path)
        assert gpu == get_gpu(path.stem)


@pytest.mark.parametrize("gpu", all_gpus(), ids=lambda g: g.id)
def test_quantities_are_sane(gpu: Gpu):
    for name in ("memory_bytes", "usable_memory_bytes", "fp32_flops_per_s", "memory_bandwidth_bytes_per_s", "tdp_watts"):
        value = getattr(gpu, name)
        assert type(value) is int and value > 0, name
    for name in ("bf16_flops_per_s", "fp16_flops_per_s", "interconnect_bytes_per_s", "purchase_usd"):
        value = getattr(gpu, name)
        assert value is None or (type(value) is int and value > 0), name
    assert gpu.fp16_flops_per_s is not None  # every catalogue GPU has some fp16 path
    # capacities are marketed in whole (binary) gigabytes
    assert gpu.memory_bytes % GiB == 0
    assert 0.7 * gpu.memory_bytes <= gpu.usable_memory_bytes < gpu.memory_bytes
    # tensor peaks are at least the fp32 peak; a 10x gap from bandwidth is plausible hardware
    assert gpu.fp16_flops_per_s >= gpu.fp32_flops_per_s
    assert 10 * GB <= gpu.memory_bandwidth_bytes_per_s <= 20_000 * GB
    assert gpu.source.startswith("https://")
    assert gpu.memory_note and gpu.usable_note and gpu.rent_source and gpu.purchase_source
    if gpu.rent_usd_per_hour is not None:
        assert 0.05 < gpu.rent_usd_per_hour < 50 and gpu.rent_date
    if gpu.purchase_usd is not None:
        assert gpu.purchase_date
    assert gpu.vendor in {"nvidia", "amd", "apple"}


def test_bf16_absent_only_before_ampere():
    no_bf16 = {g.id for g in all_gpus() if g.bf16_flops_per_s is None}
    assert no_bf16 == {"t4", "v100-16gb", "v100-32gb"}


def test_apple_usable_is_the_default_working_set_fraction():
    for gpu_id in ("m2-ultra-192gb", "m3-ultra-512gb"):
        gpu = get_gpu(gpu_id)
        assert gpu.vendor == "apple"
        assert gpu.usable_memory_bytes == gpu.memory_bytes * 3 // 4
        assert "recommendedMaxWorkingSetSize" in gpu.usable_note


def test_gddr_ecc_carve_out_matches_nvidia_smi():
    """ECC on by default takes 1/16 of GDDR: nvidia-smi reports 15360 MiB on a T4 and 46068 MiB on an L40S."""
    MiB = 2**20
    assert get_gpu("t4").usable_memory_bytes < 15360 * MiB
    assert get_gpu("l40s").usable_memory_bytes < 46080 * MiB
    assert get_gpu("rtx-4090").usable_memory_bytes > 23 * GiB  # no ECC on GeForce


# --- spot checks against the vendor datasheets (numbers typed from the sheets, not from the JSON) ----------


def _close(actual: int | None, expected: float, rel: float = 1e-3) -> bool:
    return actual is not None and abs(actual - expected) <= rel * expected


def test_h100_sxm_against_datasheet():
    # NVIDIA H100 datasheet: BF16 Tensor Core 1,979 TFLOPS "with sparsity", dense is half;
    # Hopper whitepaper table: 989.4 dense. 3.35 TB/s HBM3, NVLink 900 GB/s, up to 700 W.
    h100 = get_gpu("h100-80gb")
    assert _close(h100.bf16_flops_per_s, 1979 * TERA / 2)
    assert h100.bf16_flops_per_s == 989_400_000_000_000
    assert _close(h100.fp32_flops_per_s, 67 * TERA, rel=0.01)
    assert h100.memory_bandwidth_bytes_per_s == 3_350_000_000_000
    assert h100.memory_bytes == 80 * GiB == 85_899_345_920
    assert h100.interconnect_bytes_per_s == 900 * GB
    assert h100.tdp_watts == 700


def test_h100_pcie_and_h200_against_datasheets():
    pcie = get_gpu("h100-pcie")  # 1,513 TFLOPS sparse BF16, 2 TB/s, PCIe Gen5 128 GB/s
    assert _close(pcie.bf16_flops_per_s, 1513 * TERA / 2)
    assert pcie.memory_bandwidth_bytes_per_s == 2000 * GB
    assert pcie.interconnect_bytes_per_s == 128 * GB
    h200 = get_gpu("h200")  # 141 GB HBM3e, 4.8 TB/s, same compute as H100 SXM
    assert h200.memory_bytes == 141 * GiB
    assert h200.memory_bandwidth_bytes_per_s == 4800 * GB
    assert h200.bf16_flops_per_s == get_gpu("h100-80gb").bf16_flops_per_s


def test_a100_against_datasheet():
    # A100 datasheet: BF16 312 TFLOPS dense (624 sparse), FP32 19.5, 80GB SXM 2,039 GB/s, 40GB 1,555 GB/s.
    a80, a40 = get_gpu("a100-80gb"), get_gpu("a100-40gb")
    assert a80.bf16_flops_per_s == a40.bf16_flops_per_s == 312 * TERA
    assert _close(a80.fp32_flops_per_s, 19.5 * TERA)
    assert _close(a80.memory_bandwidth_bytes_per_s, 2.0e12, rel=0.02)
    assert a80.memory_bandwidth_bytes_per_s == 2039 * GB
    assert a40.memory_bandwidth_bytes_per_s == 1555 * GB
    assert a80.memory_bytes == 2 * a40.memory_bytes == 80 * GiB


def test_other_datasheet_spot_checks():
    # L40S datasheet prints "362.05 | 733*" (dense | sparse; the two disagree by 1%): the dense figure is used
    assert _close(get_gpu("l40s").bf16_flops_per_s, 362.05 * TERA)
    assert get_gpu("l40s").memory_bandwidth_bytes_per_s == 864 * GB
    assert _close(get_gpu("l4").bf16_flops_per_s, 242 * TERA / 2)  # 242 sparse
    assert get_gpu("l4").tdp_watts == 72
    t4 = get_gpu("t4")  # 65 TFLOPS mixed precision, 8.1 FP32, 320 GB/s, 70 W
    assert (t4.fp16_flops_per_s, t4.fp32_flops_per_s, t4.bf16_flops_per_s) == (65 * TERA, 8.1e12, None)
    assert t4.memory_bandwidth_bytes_per_s == 320 * GB
    v100 = get_gpu("v100-32gb")  # 125 TFLOPS tensor, 15.7 FP32, 900 GB/s, NVLink 300 GB/s
    assert (v100.fp16_flops_per_s, v100.memory_bandwidth_bytes_per_s) == (125 * TERA, 900 * GB)
    assert v100.memory_bytes == 32 * GiB and get_gpu("v100-16gb").memory_bytes == 16 * GiB
    # Ada whitepaper: RTX 4090 BF16 with FP32 accumulate 165.2 dense, FP32 82.6, 1,008 GB/s
    r4090 = get_gpu("rtx-4090")
    assert _close(r4090.bf16_flops_per_s, 165.2 * TERA) and _close(r4090.fp32_flops_per_s, 82.6 * TERA)
    assert r4090.memory_bandwidth_bytes_per_s == 1008 * GB
    assert _close(get_gpu("rtx-3090").bf16_flops_per_s, 71 * TERA)  # GA102 whitepaper, FP32 accumulate
    assert _close(get_gpu("rtx-6000-ada").bf16_flops_per_s, 1457 * TERA / 4, rel=0.001)  # 1,457 = FP8 sparse
    assert _close(get_gpu("a6000").bf16_flops_per_s, 309.7 * TERA / 2, rel=0.001)  # 309.7 sparse
    mi = get_gpu("mi300x")  # AMD: 1,307.4 TFLOPS BF16 dense, 163.4 FP32, 5.3 TB/s, 192 GB, 750 W
    assert _close(mi.bf16_flops_per_s, 1307.4 * TERA) and _close(mi.fp32_flops_per_s, 163.4 * TERA)
    assert (mi.memory_bandwidth_bytes_per_s, mi.memory_bytes, mi.tdp_watts) == (5300 * GB, 192 * GiB, 750)
    assert get_gpu("m2-ultra-192gb").memory_bandwidth_bytes_per_s == 800 * GB  # Apple: 800 GB/s
    assert get_gpu("m3-ultra-512gb").memory_bandwidth_bytes_per_s == 819 * GB  # Apple: 819 GB/s
    assert get_gpu("m3-ultra-512gb").memory_bytes == 512 * GiB


def test_flops_per_s_by_dtype():
    t4 = get_gpu("t4")
    assert t4.flops_per_s("bf16") is None and t4.flops_per_s("fp16") == 65 * TERA
    with pytest.raises(ValueError):
        t4.flops_per_s("fp8")


# --- lookup -----------------------------------------------------------------------------------------------


def test_lookup_is_case_insensitive():
    assert get_gpu("H100-80GB") is get_gpu("h100-80gb")
    assert get_gpu("  RTX-4090 ").id == "rtx-4090"


def test_unknown_id_suggests_close_ids():
    with pytest.raises(PeftcalcError) as exc:
        get_gpu("h100")
    msg = str(exc.value)
    assert "h100-80gb" in msg and "h100-pcie" in msg and "peftcalc gpus" in msg
    with pytest.raises(PeftcalcError, match="rtx-4090"):
        get_gpu("rtx4090")
    with pytest.raises(PeftcalcError, match="peftcalc gpus"):
        get_gpu("no-such-thing-at-all")


def test_import_does_not_pull_heavy_libraries():
    code = (
        "import sys; from peftcalc.hardware.catalogue import all_gpus; all_gpus(); "
        "print([m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- user files -------------------------------------------------------------------------------------------


def _minimal(**over) -> dict:
    entry = {
        "id": "my-gpu",
        "name": "My GPU",
        "memory_bytes": 32 * GiB,
        "usable_memory_bytes": 31 * GiB,
        "bf16_flops_per_s": 100 * TERA,
        "fp16_flops_per_s": 100 * TERA,
        "fp32_flops_per_s": 20 * TERA,
        "memory_bandwidth_bytes_per_s": 1000 * GB,
    }
    entry.update(over)
    return entry


def _write(tmp_path: Path, data, name: str = "gpus.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_user_file_single_object_with_defaults(tmp_path):
    (gpu,) = load_gpu_file(_write(tmp_path, _minimal()))
    assert gpu.id == "my-gpu" and gpu.memory_bytes == 32 * GiB
    assert gpu.rent_usd_per_hour is None and gpu.source == "user file" and gpu.interconnect == ""


def test_user_file_list_adds_and_overrides(tmp_path):
    h100 = asdict(get_gpu("h100-80gb"))
    h100["rent_usd_per_hour"] = 1.25
    h100["rent_source"] = "our negotiated price"
    path = _write(tmp_path, [_minimal(), h100])
    cat = catalogue_with([path])
    assert cat["h100-80gb"].rent_usd_per_hour == 1.25
    assert get_gpu("h100-80gb", cat).rent_source == "our negotiated price"
    assert get_gpu("MY-GPU", cat).name == "My GPU"
    assert get_gpu("h100-80gb").rent_usd_per_hour != 1.25  # built-ins untouched
    assert set(gpu_ids()) < set(cat)
    with pytest.raises(PeftcalcError, match="my-gpu"):
        get_gpu("my-gpu")  # only in the catalogue it was added to


def test_later_user_file_wins(tmp_path):
    a = _write(tmp_path, _minimal(name="first"), "a.json")
    b = _write(tmp_path, _minimal(name="second"), "b.json")
    assert catalogue_with([a, b])["my-gpu"].name == "second"
    assert catalogue_with([]) == {g.id: g for g in all_gpus()}


def test_rent_may_be_given_as_an_integer(tmp_path):
    (gpu,) = load_gpu_file(_write(tmp_path, _minimal(rent_usd_per_hour=2)))
    assert gpu.rent_usd_per_hour == 2.0 and isinstance(gpu.rent_usd_per_hour, float)


@pytest.mark.parametrize(
    "entry, needle",
    [
        ({k: v for k, v in _minimal().items() if k != "memory_bytes"}, "missing required field 'memory_bytes'"),
        (_minimal(memory_bytes="80GB"), "field 'memory_bytes' must be an integer, got \"80GB\""),
        (_minimal(memory_bytes=80.5), "field 'memory_bytes' must be an integer"),
        (_minimal(memory_bytes=True), "field 'memory_bytes' must be an integer"),
        (_minimal(fp32_flops_per_s=-1), "field 'fp32_flops_per_s' must be positive, got -1"),
        (_minimal(memory_bandwidth_bytes_per_s=0), "field 'memory_bandwidth_bytes_per_s' must be positive"),
        (_minimal(rent_usd_per_hour=-0.5), "field 'rent_usd_per_hour' must be non-negative"),
        (_minimal(fp32_flops_per_s=None), "field 'fp32_flops_per_s' must not be null"),
        (_minimal(bf16_tflops=100), "unknown field 'bf16_tflops'"),
        (_minimal(id="My GPU"), "field 'id' must be a short lower-case name"),
        (_minimal(rent_date="June 2025"), "field 'rent_date' must be YYYY-MM"),
        (_minimal(usable_memory_bytes=33 * GiB), "'usable_memory_bytes' (35433480192) exceeds 'memory_bytes'"),
    ],
)
def test_bad_user_entry_names_file_entry_and_field(tmp_path, entry, needle):
    path = _write(tmp_path, entry)
    with pytest.raises(PeftcalcError) as exc:
        load_gpu_file(path)
    msg = str(exc.value)
    assert str(path) in msg and needle in msg
    assert "entry" in msg


def test_bad_entry_in_a_list_is_named_by_index_and_id(tmp_path):
    path = _write(tmp_path, [_minimal(), _minimal(id="other", fp16_flops_per_s="fast")])
    with pytest.raises(PeftcalcError, match=r"entry 1 \(id 'other'\): field 'fp16_flops_per_s'"):
        load_gpu_file(path)


def test_unknown_field_suggests_the_right_name(tmp_path):
    entry = _minimal()
    entry["memory_bandwith_bytes_per_s"] = entry.pop("memory_bandwidth_bytes_per_s")
    with pytest.raises(PeftcalcError, match="did you mean 'memory_bandwidth_bytes_per_s'"):
        load_gpu_file(_write(tmp_path, entry))


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("42", "expected a GPU object or a list"),
        ("[]", "empty"),
        ("[1]", "entry 0: expected a JSON object"),
    ],
)
def test_malformed_user_files(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PeftcalcError, match=needle):
        load_gpu_file(path)


def test_duplicate_ids_in_one_file(tmp_path):
    with pytest.raises(PeftcalcError, match="appears more than once"):
        load_gpu_file(_write(tmp_path, [_minimal(), _minimal()]))


def test_missing_file(tmp_path):
    with pytest.raises(PeftcalcError, match="cannot read GPU file"):
        catalogue_with([tmp_path / "nope.json"])
