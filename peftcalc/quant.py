"""bitsandbytes' quantized base, as data: how it stores each weight, what peft's preparation changes, and which
bitsandbytes release keeps what for backward. No torch: every number follows bitsandbytes' code (cited per
function, read at 0.50.2) and is checked to the byte against a real bitsandbytes step on the CPU
(tests/test_quant.py, tests/measure/test_bitsandbytes.py).

4-bit (`functional.quantize_4bit`, transformers `BitsAndBytesConfig(load_in_4bit=True)`): the packed codes, two
per byte of the storage dtype, `((n + 1) // (2 * itemsize), 1)` elements; one fp32 absmax per block of 64; with
double quantization (`compress_statistics`, QLoRA section 3) the absmax are shifted by their mean (`offset`,
a 0-dim fp32 tensor) and quantized again by `quantize_blockwise(blocksize=256)`: one uint8 per block, one fp32
absmax per 256 blocks, and a copy of the 256-entry fp32 dynamic code (`code.to(device, copy=True)`, one per
weight). Every weight also keeps its own 16-entry fp32 code (`get_4bit_type`, NF4 or FP4).
8-bit (LLM.int8, `Int8Params._quantize`): int8 values (`CB`, the parameter's own storage) and one fp32 scale per
output row (`SCB`).

What transformers does not quantize (`quantizers/base.py` `get_modules_to_not_convert`): the output embedding,
tied weights, the module of the last parameter, and the model's `_keep_in_fp32_modules` (T5's `wo`); and only
modules whose type is exactly nn.Linear or Conv1D (`integrations/bitsandbytes.py` `replace_with_bnb_linear`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from peftcalc.errors import PeftcalcError
from peftcalc.precision import Precision
from peftcalc.units import dtype_bytes

QuantType = Literal["nf4", "fp4"]
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")
QUANT_STORAGES: tuple[str, ...] = ("uint8", "bf16", "fp16", "fp32")
BLOCKSIZE_4BIT = 64  # transformers' BitsAndBytesConfig passes none: quantize_4bit's default
NESTED_BLOCKSIZE = 256  # quantize_4bit: quantize_blockwise(_absmax - offset, blocksize=256)
CODE_4BIT_ENTRIES = 16  # get_4bit_type: the NF4 or FP4 table, fp32
DYNAMIC_CODE_ENTRIES = 256  # create_dynamic_map(): the 8-bit code of the nested absmax, fp32
# transformers models whose `_keep_in_fp32_modules` names linears (checked against transformers in tests):
# they are never quantized.
KEEP_IN_FP32: dict[str, tuple[str, ...]] = {"t5": ("wo",), "mt5": ("wo",)}


@dataclass(frozen=True)
class Quantization:
    """How bitsandbytes stores the frozen base (transformers' BitsAndBytesConfig). peftcalc's default is the
    QLoRA paper's recipe, NF4 with double quantization (transformers' own defaults are fp4 without it)."""

    bits: int = 4  # 4 (load_in_4bit) or 8 (load_in_8bit, LLM.int8)
    quant_type: QuantType = "nf4"  # bnb_4bit_quant_type
    double_quant: bool = True  # bnb_4bit_use_double_quant
    storage: str = "uint8"  # bnb_4bit_quant_storage (bf16 for FSDP-QLoRA)

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise PeftcalcError(f"--quant-bits must be 4 or 8, got {self.bits}")
        if self.quant_type not in QUANT_TYPES:
            raise PeftcalcError(f"--quant-type must be nf4 or fp4, got {self.quant_type!r}")
        if self.storage not in QUANT_STORAGES:
            raise PeftcalcError(f"--quant-storage must be one of {', '.join(QUANT_STORAGES)}, got {self.storage!r}")

    @property
    def format(self) -> str:
        """The weight format of a quantized tensor (methods.base.WeightFormat)."""
        return self.quant_type if self.bits == 4 else "int8"

    @property
    def label(self) -> str:
        if self.bits == 8:
            return "LLM.int8 (8-bit)"
        return f"{self.quant_type.upper()}{' with double quantization' if self.double_quant else ''}" + \
            (f", {self.storage} storage" if self.storage != "uint8" else "")


@dataclass(frozen=True)
class QuantizedBytes:
    """One quantized weight's bytes, by the tensor that holds them."""

    packed: int  # the parameter's own storage (packed codes; int8 values)
    scales: int  # absmax (fp32, or uint8 when nested) + nested absmax (fp32); int8: SCB
    constants: int  # per-weight constants: 4-bit code, nested dynamic code, offset

    @property
    def total(self) -> int:
        return self.packed + self.scales + self.constants


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def quantized_bytes(numel: int, rows: int, q: Quantization) -> QuantizedBytes:
    """Bytes of one weight of `numel` elements and `rows` output features, stored as `q` says."""
    if q.bits == 8:
        return QuantizedBytes(numel, 4 * rows, 0)
    item = dtype_bytes(q.storage)
    packed = (numel + 1) // (2 * item) * item
    blocks = _ceil_div(numel, BLOCKSIZE_4BIT)
    code = 4 * CODE_4BIT_ENTRIES
    if not q.double_quant:
        return QuantizedBytes(packed, 4 * blocks, code)
    nested = 4 * _ceil_div(blocks, NESTED_BLOCKSIZE)
    return QuantizedBytes(packed, blocks + nested, code + 4 * DYNAMIC_CODE_ENTRIES + 4)


def gemm_4bit_scratch_bytes(out_features: int, in_features: int, compute_bytes: int, q: Quantization) -> int:
    """What one `bitsandbytes::gemm_4bit` holds inside itself when it dequantizes (the CPU's default kernel always;
    CUDA's `_dequant_linear_fallback` above 1,536 tokens or where its per-architecture heuristic picks it): the
    nested absmax in fp32 and its `+ offset` copy, and the whole weight in the compute dtype
    (backends/default/ops.py `_gemm_4bit_default_impl`, backends/cuda/ops.py `_dequant_linear_fallback`). Not in the
    dispatch-level replay; measured at the allocator on the CPU (peftcalc/measure/allocator.py)."""
    n = out_features * in_features
    absmax = 2 * 4 * _ceil_div(n, BLOCKSIZE_4BIT) if q.double_quant else 0
    return absmax + n * compute_bytes


def nf4_bytes(numel: int) -> int:
    """Packed NF4 with double quantization, absmax and nested absmax of one weight (the QLoRA paper's 4.127 bits
    per parameter), without the per-weight constants."""
    b = quantized_bytes(numel, 1, Quantization())
    return b.packed + b.scales


def kept_dense(family: str, module: str) -> bool:
    """A linear transformers keeps unquantized because the model lists it in `_keep_in_fp32_modules`
    (should_convert_module: the pattern as a suffix or a module-boundary match)."""
    return any(module.endswith(k) or re.search(rf"(^|\.){re.escape(k)}(\.|$)", module)
               for k in KEEP_IN_FP32.get(family, ()))


def quantized_bias_dtype(q: Quantization, loaded: Precision, running: Precision) -> str:
    """The dtype a quantized linear's bias has after the first forward: Linear4bit.forward casts `bias.data` to
    the input it computes with (x.to(bnb_4bit_compute_dtype), the loaded recipe's compute dtype); Linear8bitLt to
    its input's dtype (the running recipe's activation dtype; under autocast it can differ per module)."""
    return loaded.compute_dtype if q.bits == 4 else running.param_dtype


# ---- peft's prepare_model_for_kbit_training -----------------------------------------------------------------

def kbit_prepared(precision: Precision) -> Precision:
    """The precision after peft's `prepare_model_for_kbit_training` (peft/utils/other.py): every fp16/bf16
    parameter that is not a Params4bit becomes fp32 (embeddings, norms, the head, unquantized biases), so no
    master copies are needed. The activations follow the fp32 weights unless the recipe autocasts: amp-bf16, and
    the mixed recipes, which on an fp32 model are what Trainer(bf16=True / fp16=True) runs (torch.autocast).
    The quantized linears still compute in bnb_4bit_compute_dtype (the recipe's compute dtype)."""
    autocast = precision.compute_dtype if precision.compute_dtype != precision.param_dtype or precision.master \
        else "fp32"
    return replace(precision, name=f"{precision.name}, kbit-prepared", param_dtype="fp32", compute_dtype=autocast,
                   master=False, autocast=autocast != "fp32")


# ---- bitsandbytes releases ---------------------------------------------------------------------------------

# bitsandbytes PR #1270 ("fix QLoRA mem bug: delete useless buffered activation", merged 2024-07-16, commit
# 9e75374; first release 0.43.2): MatMul4Bit.forward kept `ctx.tensors = (A, B)` before, `(None, B)` after.
KEEPS_4BIT_INPUT_BEFORE = (0, 43, 2)
# bitsandbytes PR #1949 ("New 4bit GEMM kernels", first release 0.50.0): MatMul4Bit.forward calls one
# `bitsandbytes::gemm_4bit` operator; before, `F.linear(A, F.dequantize_4bit(B, quant_state).to(A.dtype).t(), bias)`.
GEMM_4BIT_OPERATOR_FROM = (0, 50, 0)
CURRENT_BITSANDBYTES = "0.50.2"  # the release the measured backend runs and the default behaviour
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:(?:\.?(?:post|dev|rc|a|b)\d*)|\+[\w.]+)*")


def parse_bitsandbytes_version(text: str) -> tuple[int, int, int]:
    """'0.41.1' -> (0, 41, 1); PEP 440 suffixes (rc1, .post1, .dev0, +local) are allowed and ignored."""
    m = _VERSION.fullmatch(text.strip())
    if not m:
        raise PeftcalcError(f"--bitsandbytes-version must be a release such as 0.41.1 or 0.50.2, got {text!r}")
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if version < (0, 39, 0):
        raise PeftcalcError(f"--bitsandbytes-version {text}: that release has no 4-bit quantization (added in "
                            "0.39.0); give 0.39.0 or later")
    return version


def python_dequant_forward(version: str | None) -> bool:
    """Whether MatMul4Bit's forward dequantizes the weight in Python (visible at the dispatcher) in this release."""
    return version is not None and parse_bitsandbytes_version(version) < GEMM_4BIT_OPERATOR_FROM


def keeps_4bit_input(version: str | None) -> bool:
    """Whether MatMul4Bit keeps each 4-bit linear's input for backward in this release (None: today's)."""
    return version is not None and parse_bitsandbytes_version(version) < KEEPS_4BIT_INPUT_BEFORE

