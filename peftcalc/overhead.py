"""What a GPU holds beyond the tensors the step allocates, line by line, each with its source; and the three
quantities users compare with:

- **allocated peak** (`torch.cuda.max_memory_allocated`): the tensor peak, plus what PyTorch's caching
  allocator counts beyond the tensors' bytes: `workspace` and `rounding`;
- **reserved** (`torch.cuda.max_memory_reserved`, what decides an out-of-memory error inside PyTorch):
  allocated plus the allocator's slack: `segments` and `fragmentation`;
- **device total** (nvidia-smi's "used", what must fit in the GPU): reserved plus the `context`.

The lines (`--overhead NAME=SIZE` replaces one, `--overhead none` drops them all):

- `workspace` (allocated): the cuBLAS/cuBLASLt workspace of the stream, which torch allocates through the
  caching allocator (aten/src/ATen/cuda/CublasHandlePool.cpp `getNewWorkspace`): 32 MiB on Hopper and
  Blackwell (compute capability 9, 10, 12), 4096 KiB x 2 + 16 KiB x 8 = 8.125 MiB on earlier GPUs
  (`parseChosenWorkspaceSize`). The estimate assumes the larger unless told the GPU.
- `rounding` (allocated): every block is rounded up to 512 bytes (c10 `kMinBlockSize`); computed for the
  model-state tensors (weights, gradients, master copies, optimizer states), whose shapes are known.
- `segments` (reserved): the allocator takes memory from the driver in segments (c10/cuda/
  CUDACachingAllocator.cpp `get_allocation_size`): requests up to 1 MiB share 2 MiB segments, 1-10 MiB share
  20 MiB segments, larger ones get their own segment rounded up to 2 MiB. Computed for the model-state
  tensors: the unused tail of each large segment, and of the last shared segment of each pool.
- `fragmentation` (reserved): cached blocks the allocator cannot reuse for the request at hand, because the
  step allocates and frees tensors of many sizes (blocks above 1 MiB are split, freed neighbours merged,
  but a freed block smaller than the next request stays cached unused). It grows with what the step
  allocates and frees, not with the model states held across steps, so it is modelled as a fraction of the
  transient bytes (the tensor peak minus the bytes held between steps). The default, 3.96 %, is the median
  over the one-GPU published runs that print both peaks for the same run: peft issue #1469 (bert-base-uncased,
  full fine-tuning 3.35 %, LoRA 4.56%; low confidence: the issue states no batch). peftcalc/evidence/slack.py
  recomputes it from the records (a test keeps the two equal). Answer.AI's FSDP pairs are listed there, not
  used: their reserved peak does not grow with the tokens.
- `context` (device): the CUDA context, driver and lazily loaded kernels, outside the allocator. Default
  426 MiB: a fresh context of torch 2.10 with CUDA 13.0 measured by `nvidia-smi` (unsloth-zoo PR #1053, RTX
  6000 Ada, 2026-08); 287 MB was measured with lazy loading in 2022 (pytorch PR #86509) and 1343 MiB before
  CUDA 11.7 loaded kernels lazily (transformers docs, model_memory_anatomy.md, V100, CUDA 11.2). Kernels
  loaded later in training add to it (not measured here). Measure yours as `mem_get_info` total - free -
  reserved (`peftcalc measure --backend run` reports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation
from peftcalc.precision import Precision

MiB = 2**20
ALLOCATOR_BLOCK = 512  # kMinBlockSize
SMALL_SIZE, SMALL_SEGMENT = 1 * MiB, 2 * MiB  # kSmallSize, kSmallBuffer
LARGE_SEGMENT, MIN_LARGE_ALLOC, ROUND_LARGE = 20 * MiB, 10 * MiB, 2 * MiB  # kLargeBuffer, kMinLargeAlloc, kRoundLarge
WORKSPACE_HOPPER = 4096 * 8 * 1024  # CublasHandlePool.cpp: 32 MiB for compute capability 9, 10, 12
WORKSPACE_EARLIER = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8"
DEFAULT_WORKSPACE_BYTES = WORKSPACE_HOPPER
DEFAULT_CONTEXT_BYTES = 426 * MiB
DEFAULT_FRAGMENTATION = 0.0396  # of the transient bytes: peftcalc/evidence/slack.py one_gpu_fraction()
LINES = ("workspace", "rounding", "segments", "fragmentation", "context")
LEVELS = {"workspace": "allocated", "rounding": "allocated", "segments": "reserved", "fragmentation": "reserved",
          "context": "device", "user": "device"}

SOURCES = {
    "workspace": "cuBLAS workspace through the caching allocator (CublasHandlePool.cpp): 32 MiB on Hopper/Blackwell, "
                 "8.1 MiB before",
    "rounding": "computed: the caching allocator rounds each block up to 512 bytes (model-state tensors)",
    "segments": "computed: 2 MiB / 20 MiB segments and 2 MiB rounding of large ones (CUDACachingAllocator.cpp) for "
                "the model-state tensors",
    "fragmentation": "3.96 % of the transient bytes: the median of the one-GPU published runs that print both "
                     "allocated and reserved (peft #1469; peftcalc/evidence/slack.py)",
    "context": "426 MiB, a fresh CUDA 13 context measured with nvidia-smi (unsloth-zoo PR #1053); kernels loaded "
               "later add to it",
    "user": "given with --overhead",
}


@dataclass(frozen=True)
class OverheadLine:
    name: str
    bytes: int
    source: str
    level: str = "device"  # the first quantity it belongs to: "allocated", "reserved" or "device"


@dataclass(frozen=True)
class OverheadSpec:
    """Overrides of the default lines: bytes per line name (fragmentation may be a fraction of the transient
    bytes); `none` drops every line."""

    context: int | None = None
    workspace: int | None = None
    rounding: int | None = None
    segments: int | None = None
    fragmentation: float | int | None = None  # a fraction (< 1) of the transient bytes, or bytes
    none: bool = False

    @classmethod
    def parse(cls, text: str | None) -> "OverheadSpec":
        """`none`, or comma-separated NAME=SIZE with sizes like 600MiB, 1GB, 0, or (fragmentation) 10%."""
        if text is None or not text.strip():
            return cls()
        if text.strip().lower() == "none":
            return cls(none=True)
        values: dict[str, float | int] = {}
        for part in text.split(","):
            name, _, size = part.partition("=")
            name = name.strip().lower()
            if name not in LINES or not size.strip():
                raise PeftcalcError(f"--overhead: expected none or NAME=SIZE with NAME one of {', '.join(LINES)}, "
                                    f"got {part.strip()!r}")
            values[name] = _size(size.strip(), name == "fragmentation")
        return cls(**values)  # type: ignore[arg-type]


def _size(text: str, fraction_ok: bool) -> float | int:
    t = text.replace("_", "").strip()
    if fraction_ok and t.endswith("%"):
        return float(t[:-1]) / 100
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    low = t.lower()
    for u, mult in units.items():
        if low.endswith(u):
            num = low[: -len(u)].strip()
            try:
                return int(round(float(num) * mult))
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise PeftcalcError(f"--overhead: {text!r} is not a size (try 600MiB, 1GB, 0 or 10%)") from None


def workspace_bytes(compute_capability_major: int | None) -> int:
    """The cuBLAS workspace torch allocates on a GPU of this compute capability (None: the larger default)."""
    if compute_capability_major is None or compute_capability_major in (9, 10, 12):
        return WORKSPACE_HOPPER
    return WORKSPACE_EARLIER


def _state_tensor_sizes(adaptation: Adaptation, precision: Precision, states_per_tensor: int) -> list[tuple[int, int]]:
    """(bytes of one tensor, how many) for every model-state tensor: weights, gradients, master copies,
    optimizer states (and AdamW's 4-byte step)."""
    from peftcalc.memory import tensor_bytes
    from peftcalc.units import dtype_bytes

    out = []
    for g in adaptation.tensors:
        one = tensor_bytes(g, precision, adaptation)
        out.append((one, g.count))
        if g.trainable:
            out.append((one, g.count))  # gradient
            if precision.has_master(g.added):
                out.append((g.numel * 4, g.count))
            state = g.numel * dtype_bytes(precision.state_dtype(g.added))
            if states_per_tensor:
                out += [(state, g.count * states_per_tensor), (4, g.count)]  # exp_avg, exp_avg_sq; AdamW's step
    return [(n, k) for n, k in out if n > 0 and k > 0]


@lru_cache(maxsize=4096)
def rounding_bytes(adaptation: Adaptation, precision: Precision, has_master: bool, states_per_tensor: int) -> int:
    """Padding the caching allocator adds to each model-state tensor: each block rounded up to 512 bytes."""
    return sum((-n % ALLOCATOR_BLOCK) * k for n, k in _state_tensor_sizes(adaptation, precision, states_per_tensor))


@lru_cache(maxsize=4096)
def segment_bytes(adaptation: Adaptation, precision: Precision, states_per_tensor: int) -> int:
    """Segment space the model-state tensors leave unused: a large tensor's own segment rounded up to 2 MiB;
    the last 2 MiB (small) and 20 MiB (mid-size) shared segment, packed tightly."""
    large = small = mid = 0
    for n, k in _state_tensor_sizes(adaptation, precision, states_per_tensor):
        block = max(ALLOCATOR_BLOCK, -(-n // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK)
        if block <= SMALL_SIZE:
            small += block * k
        elif block < MIN_LARGE_ALLOC:
            mid += block * k
        else:
            large += (-block % ROUND_LARGE) * k
    return large + (-small % SMALL_SEGMENT) + (-mid % LARGE_SEGMENT)


def overhead_lines(spec: OverheadSpec, tensor_peak: int, held: int, rounding: int,
                   segments: int) -> tuple[OverheadLine, ...]:
    """The lines for a step whose tensor peak is `tensor_peak` and which holds `held` bytes between steps."""
    if spec.none:
        return ()
    frag = DEFAULT_FRAGMENTATION if spec.fragmentation is None else spec.fragmentation
    transient = max(0, tensor_peak - held)
    frag_bytes = int(transient * frag) if isinstance(frag, float) and frag < 1 else int(frag)
    values = {"workspace": DEFAULT_WORKSPACE_BYTES if spec.workspace is None else int(spec.workspace),
              "rounding": rounding if spec.rounding is None else int(spec.rounding),
              "segments": segments if spec.segments is None else int(spec.segments),
              "fragmentation": frag_bytes,
              "context": DEFAULT_CONTEXT_BYTES if spec.context is None else int(spec.context)}
    return tuple(OverheadLine(n, values[n], SOURCES["user"] if getattr(spec, n) is not None else SOURCES[n], LEVELS[n])
                 for n in LINES)
