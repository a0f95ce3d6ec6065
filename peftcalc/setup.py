"""The training setup an estimate assumes: everything except the model and the method.

Every field has the default a plain `transformers` + `peft` training script gets, so a Setup() is the seed
document's case and each option is a stated change from it. Fields are grouped by what they describe: the
numbers of the step, the recipe around it (kernels, loss, checkpointing, quantization preparation, library
versions whose behaviour changed what is kept), and how the step is spread over GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import re
from typing import Literal

from peftcalc.errors import PeftcalcError
from peftcalc.precision import Precision, get_precision

Attention = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]
AdamWImpl = Literal["forloop", "foreach", "fused"]
# The loss over the vocabulary: "standard" (logits, their fp32 copy, log-softmax, as transformers computes it),
# "chunked" (the cross-entropy computed over chunks of tokens: torchtune's chunked CE, TRL's chunked_nll),
# "fused" (a fused linear + cross-entropy kernel that never materialises the logits: Liger, Cut Cross-Entropy).
Loss = Literal["standard", "chunked", "fused"]
StateDtype = Literal["fp32", "bf16"]
# Which implementation shards the run (ZeRO stage >= 1 over 2+ GPUs): torch FSDP2 (`fully_shard`), torch FSDP1
# (`FullyShardedDataParallel`, flat parameters per wrapped unit), or DeepSpeed ZeRO (per-module fetching, buckets).
Sharding = Literal["fsdp2", "fsdp1", "deepspeed"]
BackwardPrefetch = Literal["pre", "post", "none"]  # FSDP1's BackwardPrefetch.BACKWARD_PRE / BACKWARD_POST / None
AdapterDtype = Literal["fp32", "bf16", "fp16"]

ATTENTIONS: tuple[str, ...] = Attention.__args__  # type: ignore[attr-defined]
ADAMW_IMPLS: tuple[str, ...] = AdamWImpl.__args__  # type: ignore[attr-defined]
LOSSES: tuple[str, ...] = Loss.__args__  # type: ignore[attr-defined]
STATE_DTYPES: tuple[str, ...] = StateDtype.__args__  # type: ignore[attr-defined]
ADAPTER_DTYPES: tuple[str, ...] = AdapterDtype.__args__  # type: ignore[attr-defined]
SHARDINGS: tuple[str, ...] = Sharding.__args__  # type: ignore[attr-defined]
BACKWARD_PREFETCHES: tuple[str, ...] = BackwardPrefetch.__args__  # type: ignore[attr-defined]
# DeepSpeed's own defaults (deepspeed/runtime/zero/config.py), in elements; HF's "auto" replaces some with sizes from
# the hidden size (transformers integrations/deepspeed.py: reduce bucket h*h, prefetch 0.9*h*h, persistence 10*h)
DS_REDUCE_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000
DS_PERSISTENCE_THRESHOLD = 100_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
DS_MAX_REUSE_DISTANCE = 1_000_000_000
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?(\.?(dev|rc|post)\d*)?")


def version_tuple(text: str) -> tuple[int, int]:
    """(major, minor) of a library version string ("4.48.1" -> (4, 48))."""
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@dataclass(frozen=True)
class Setup:
    # the step
    precision: str = "fp32"
    optimizer: str = "adamw"
    batch_size: int = 1  # micro-batch per GPU
    seq_len: int = 512
    gradient_accumulation: int = 1  # micro-batches per optimizer step (gradients kept between them)
    # the recipe around the step
    gradient_checkpointing: bool = False
    reentrant_checkpointing: bool = False  # torch.utils.checkpoint(use_reentrant=True) instead of transformers' default
    attention: Attention = "sdpa"
    loss: Loss = "standard"
    packing: bool = False  # several sequences per row (no padding; position ids restart per sequence)
    padded: bool = False  # rows padded to the longest of the batch: transformers passes an attention mask
    adamw_impl: AdamWImpl = "foreach"  # torch's default on CUDA
    optimizer_state_dtype: StateDtype | None = None  # None: the parameter's dtype, as torch's AdamW keeps them
    # None: the recipe's (fp32, peft's autocast_adapter_dtype); bf16 where a framework casts adapters down (TRL's
    # QLoRA, torchtune, DeepSpeed's bf16 engine)
    adapter_dtype: AdapterDtype | None = None
    kbit_preparation: bool = True  # peft's prepare_model_for_kbit_training around a quantized base
    # its use_gradient_checkpointing: peft's default True turns checkpointing on; TRL passes its own setting
    kbit_gradient_checkpointing: bool = True
    bitsandbytes_version: str | None = None  # None: today's release; older ones kept more for backward
    transformers_version: str | None = None  # None: today's; before 4.49 the causal-LM loss copied its fp32 logits
    # several GPUs
    num_gpus: int = 1  # data-parallel ranks (times tensor and pipeline parallel = GPUs in all)
    zero_stage: int = 0
    offload: bool = False  # optimizer states (and their step) in CPU memory (ZeRO-Offload)
    offload_params: bool = False  # parameters in CPU memory too (ZeRO-3 / FSDP parameter offload)
    # the implementation (see Sharding); None: the stage's default, FSDP2 for ZeRO-2/3 (what peftcalc's torchrun runs
    # measure) and DeepSpeed for ZeRO-1 (FSDP has no stage 1)
    sharding: Sharding | None = None
    # FSDP under mixed precision over a model loaded in 16 bits: accelerate (>= 0.30, PR #2674) upcasts every
    # trainable flat parameter to fp32 and FSDP's MixedPrecision gathers it in the recipe's dtype, so trainable
    # shards, their gradients and optimizer states are fp32 while the step computes in the recipe's dtype
    fp32_shards: bool = False
    fsdp_backward_prefetch: BackwardPrefetch = "pre"  # FSDP1 only (torch's default BACKWARD_PRE)
    fsdp_forward_prefetch: bool = False  # FSDP1 only (torch's default)
    # DeepSpeed ZeRO buckets, in elements (deepspeed/runtime/zero/config.py defaults)
    ds_reduce_bucket_size: int = DS_REDUCE_BUCKET  # reduce_bucket_size: ZeRO-2/3 gradient bucket
    ds_prefetch_bucket_size: int = DS_PREFETCH_BUCKET  # stage3_prefetch_bucket_size
    ds_param_persistence_threshold: int = DS_PERSISTENCE_THRESHOLD  # stage3_param_persistence_threshold
    ds_max_live_parameters: int = DS_MAX_LIVE_PARAMETERS  # stage3_max_live_parameters
    ds_max_reuse_distance: int = DS_MAX_REUSE_DISTANCE  # stage3_max_reuse_distance
    # a DeepSpeed config whose bucket sizes say "auto": transformers fills them from the model's hidden size h
    # (integrations/deepspeed.py: reduce_bucket_size h*h, stage3_prefetch_bucket_size 0.9*h*h,
    # stage3_param_persistence_threshold 10*h), overriding the three fields above
    ds_auto_buckets: bool = False
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False  # with tensor parallelism: norms and dropout sharded over the sequence
    # time only (the memory estimate is the eager step's)
    compile: bool = False  # torch.compile: pointwise operators fuse between matmuls (kernels.py)
    grad_clipping: bool = True  # clip_grad_norm_ before each optimizer step (transformers' Trainer: max_grad_norm=1.0)

    def __post_init__(self) -> None:
        for field_name, flag in (("batch_size", "--batch"), ("seq_len", "--seq"), ("num_gpus", "--gpus"),
                                 ("gradient_accumulation", "--gradient-accumulation"), ("tensor_parallel", "--tp"),
                                 ("pipeline_parallel", "--pp")):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PeftcalcError(f"{flag} must be a positive integer, got {value!r}")
        self._check_choices()
        self._check_versions()
        if self.offload and self.zero_stage == 0:
            raise PeftcalcError("--offload moves optimizer states to CPU memory as ZeRO-Offload does: give --zero 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise PeftcalcError("--offload-params keeps sharded parameters in CPU memory (ZeRO-3 / FSDP): give --zero 3")
        self._check_sharding()
        if self.reentrant_checkpointing and not self.gradient_checkpointing:
            raise PeftcalcError("--reentrant-checkpointing chooses how --gradient-checkpointing recomputes: give both")
        if self.padded and self.packing:
            raise PeftcalcError("--padded and --packing exclude each other: packed rows carry no padding")
        for value, flag in ((self.compile, "--compile"), (self.grad_clipping, "--grad-clipping")):
            if not isinstance(value, bool):
                raise PeftcalcError(f"{flag} is a yes/no setting, got {value!r}")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise PeftcalcError("--sequence-parallel shards activations across tensor-parallel ranks: give --tp 2 or more")

    def _check_sharding(self) -> None:
        if self.sharding is not None and self.sharding not in SHARDINGS:
            raise PeftcalcError(f"--sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        if self.fsdp_backward_prefetch not in BACKWARD_PREFETCHES:
            raise PeftcalcError(f"--fsdp-backward-prefetch must be one of {', '.join(BACKWARD_PREFETCHES)}, "
                                f"got {self.fsdp_backward_prefetch!r}")
        if self.sharding in ("fsdp1", "fsdp2") and self.zero_stage == 1:
            raise PeftcalcError("FSDP has no ZeRO-1 (optimizer states only): give --zero 2 or 3, or --sharding deepspeed")
        if self.sharding_impl != "deepspeed" and self.offload_params and not self.offload:
            raise PeftcalcError("FSDP's parameter offload moves the optimizer step to the CPU too: give --offload with "
                                "--offload-params")
        if self.fp32_shards and self.zero_stage not in (2, 3):
            raise PeftcalcError("--fp32-shards describes FSDP's sharded parameters: give --zero 2 or 3")
        if self.fp32_shards and self.sharding_impl == "deepspeed":
            raise PeftcalcError("--fp32-shards is FSDP's upcast under mixed precision; DeepSpeed keeps fp32 master "
                                "weights instead: give --precision bf16-mixed")
        for name in ("ds_reduce_bucket_size", "ds_prefetch_bucket_size", "ds_param_persistence_threshold",
                     "ds_max_live_parameters", "ds_max_reuse_distance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PeftcalcError(f"--{name.replace('_', '-')} must be a whole number of elements >= 0, got {value!r}")

    @property
    def sharding_impl(self) -> str:
        """The implementation sharding this run (see `sharding`): "fsdp2", "fsdp1" or "deepspeed"."""
        if self.sharding is not None:
            return self.sharding
        return "deepspeed" if self.zero_stage == 1 else "fsdp2"

    def _check_versions(self) -> None:
        for value, flag in ((self.transformers_version, "--transformers-version"),):
            if value is not None and not _VERSION.fullmatch(value):
                raise PeftcalcError(f"{flag} must look like 4.48 or 4.48.1, got {value!r}")

    def _check_choices(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise PeftcalcError(f"--zero must be 0, 1, 2 or 3, got {self.zero_stage}")
        for value, known, flag in ((self.attention, ATTENTIONS, "--attention"), (self.adamw_impl, ADAMW_IMPLS,
                                   "--adamw-impl"), (self.loss, LOSSES, "--loss")):
            if value not in known:
                raise PeftcalcError(f"{flag} must be one of {', '.join(known)}, got {value!r}")
        if self.bitsandbytes_version is not None:
            from peftcalc.quant import parse_bitsandbytes_version

            parse_bitsandbytes_version(self.bitsandbytes_version)
        if self.optimizer_state_dtype not in (None, *STATE_DTYPES):
            raise PeftcalcError(f"--optimizer-state-dtype must be fp32 or bf16, got {self.optimizer_state_dtype!r}")
        if self.adapter_dtype not in (None, *ADAPTER_DTYPES):
            raise PeftcalcError(f"--adapter-dtype must be fp32, bf16 or fp16, got {self.adapter_dtype!r}")

    @property
    def recipe(self) -> Precision:
        """The precision recipe, with the adapter dtype this setup asks for."""
        p = get_precision(self.precision)
        return replace(p, adapter_dtype=self.adapter_dtype) if self.adapter_dtype else p

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one GPU."""
        return self.batch_size * self.seq_len

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over every data-parallel GPU: micro-batch x accumulation x GPUs."""
        return self.tokens * self.gradient_accumulation * self.num_gpus

    @property
    def gpus(self) -> int:
        """GPUs in all: data x tensor x pipeline parallel."""
        return self.num_gpus * self.tensor_parallel * self.pipeline_parallel
