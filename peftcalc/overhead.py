"""What a GPU needs beyond the tensors the step allocates: CUDA realities, one line each, with its source.

The analytic peak counts tensor bytes, as the traced backend does (and as `torch.cuda.max_memory_allocated`
nearly does). `nvidia-smi` shows more. Each line below says where its number comes from; none has been
measured on a GPU by this project yet, so every one is a labelled default that `--overhead NAME=SIZE`
replaces (`--overhead none` drops them all):

- `context`: the CUDA context, kernels and libraries loaded by the process. Default 500 MiB: PyTorch's
  "Memory management" notes (docs.pytorch.org/docs/stable/notes/cuda.html) say the context is typically
  250 MiB-1 GiB depending on the CUDA version, GPU and loaded kernels (CUDA 12 loads kernels lazily);
  measure yours as `mem_get_info` total - free - reserved (`peftcalc measure --backend run` reports it).
- `workspace`: cuBLAS/cuBLASLt workspaces. Default 32 MiB: torch's default CUBLAS_WORKSPACE_CONFIG of
  `:4096:8` (eight 4 MiB chunks per handle and stream) on Hopper and later (torch/csrc/cuda/CUDABlas, and
  the "cuBLAS workspaces" section of the CUDA semantics notes).
- `rounding`: the caching allocator rounds every allocation up to a multiple of 512 bytes
  (c10/cuda/CUDACachingAllocator.cpp `kMinBlockSize`); computed exactly for the model states' tensors
  (weights, gradients, optimizer states, master weights), whose shapes are known.
- `fragmentation`: reserved minus allocated memory, the cached blocks the allocator cannot reuse for the
  request at hand. Default 5 % of the tensor peak, an assumed figure (it varies with the workload;
  `expandable_segments:True` in PYTORCH_CUDA_ALLOC_CONF mostly removes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation
from peftcalc.precision import Precision

MiB = 2**20
DEFAULT_CONTEXT_BYTES = 500 * MiB
DEFAULT_WORKSPACE_BYTES = 32 * MiB
ALLOCATOR_BLOCK = 512
DEFAULT_FRAGMENTATION = 0.05
LINES = ("context", "workspace", "rounding", "fragmentation")

SOURCES = {
    "context": "assumed default 500 MiB (PyTorch CUDA notes: 250 MiB-1 GiB, by CUDA version and GPU); not measured",
    "workspace": "assumed default 32 MiB: torch's cuBLAS workspace :4096:8 on Hopper+; not measured",
    "rounding": "computed: the CUDA caching allocator rounds each tensor up to 512 bytes (model-state tensors)",
    "fragmentation": "assumed default 5 % of the tensor peak (reserved - allocated); not measured",
    "user": "given with --overhead",
}


@dataclass(frozen=True)
class OverheadLine:
    name: str
    bytes: int
    source: str


@dataclass(frozen=True)
class OverheadSpec:
    """Overrides of the default lines: bytes per line name (fragmentation may be a fraction of the peak);
    `none` drops every line."""

    context: int | None = None
    workspace: int | None = None
    rounding: int | None = None
    fragmentation: float | int | None = None  # a fraction (< 1) of the peak, or bytes
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


@lru_cache(maxsize=4096)
def rounding_bytes(adaptation: Adaptation, precision: Precision, has_master: bool, states_per_tensor: int) -> int:
    """Padding the caching allocator adds to each model-state tensor: weight, gradient, master copy and
    optimizer states, each rounded up to 512 bytes."""
    from peftcalc.memory import has_master as master_backed, state_dtype, tensor_bytes
    from peftcalc.units import dtype_bytes

    def pad(n: int) -> int:
        return -n % ALLOCATOR_BLOCK

    total = 0
    for g in adaptation.tensors:
        one = tensor_bytes(g, precision)
        total += pad(one) * g.count
        if g.trainable:
            total += pad(one) * g.count  # gradient
            if has_master and master_backed(g, precision):
                total += pad(g.numel * 4) * g.count
            state = g.numel * dtype_bytes(state_dtype(g, precision))
            total += states_per_tensor * (pad(state) + pad(4)) * g.count
    return total


def overhead_lines(spec: OverheadSpec, tensor_peak: int, rounding: int) -> tuple[OverheadLine, ...]:
    if spec.none:
        return ()
    frag = DEFAULT_FRAGMENTATION if spec.fragmentation is None else spec.fragmentation
    frag_bytes = int(tensor_peak * frag) if isinstance(frag, float) and frag < 1 else int(frag)
    given = {"context": spec.context, "workspace": spec.workspace, "rounding": spec.rounding,
             "fragmentation": spec.fragmentation}
    values = {"context": DEFAULT_CONTEXT_BYTES if spec.context is None else int(spec.context),
              "workspace": DEFAULT_WORKSPACE_BYTES if spec.workspace is None else int(spec.workspace),
              "rounding": rounding if spec.rounding is None else int(spec.rounding),
              "fragmentation": frag_bytes}
    return tuple(OverheadLine(n, values[n], SOURCES["user"] if given[n] is not None else SOURCES[n]) for n in LINES)
