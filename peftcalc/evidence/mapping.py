"""A published record -> the peftcalc estimate of its run: model, method, precision, optimizer, checkpointing,
attention, rows, GPUs, library versions, and the overhead lines its GPU implies. Each field the record leaves
open and each reading of a framework's wording is a note; what peftcalc cannot model is `NotPredicted`.

How each field is read:

- model: the Hugging Face id through the catalogue (`peftcalc.model.catalogue.get_model`).
- precision: litgpt `bf16-true` and torchtune `dtype: bf16` -> `bf16-true` (adapters in bf16 too); a bf16-loaded
  model without autocast (peft's MetaMathQA `use_amp: false`, HF Trainer without `bf16=True`) -> `bf16` (peft
  keeps adapters in fp32); HF Trainer `bf16=True` on a bf16-loaded model -> `bf16-autocast`; an fp32 model with
  `bf16=True`/`fp16=True` (or litgpt `bf16-mixed`) -> `amp-bf16`/`amp-fp16`.
- sequence: `fixed`, `max` and `padded-to-max` are predicted at that length; `up-to` at the bound (the longest
  batch of a dataset whose samples reach it; an upper bound otherwise); `packed` with packing on. Rows of a
  batch > 1 that are padded (`up-to`, `max` in a batch, `padded-to-max` with shorter samples) give
  transformers an attention mask; litgpt and torchtune pass none.
- gradient checkpointing: transformers 4.35-4.x defaults to use_reentrant=True, 5.x to False; litgpt,
  torchtune and Answer.AI's train.py wrap layers non-reentrantly.
- GPUs: `fsdp`/`deepspeed-zero3` -> ZeRO stage 3 over `gpus`, `-offload` adds optimizer and parameter offload,
  `ddp` -> data parallel; the value compared is per GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from peftcalc.errors import PeftcalcError
from peftcalc.evidence.methods import Unpredictable, method_of, quantization_of
from peftcalc.evidence.record import PublishedRecord
from peftcalc.methods import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.overhead import OverheadSpec, workspace_bytes
from peftcalc.setup import Setup

# GPU names in the records -> compute capability major (the cuBLAS workspace size depends on it)
CAPABILITY = {"A100": 8, "A10G": 8, "L40S": 8, "3090": 8, "4090": 8, "A6000": 8, "V100": 7, "H100": 9, "H200": 9}
OPTIMIZERS = {"adamw": "adamw", "adamw-8bit": "adamw-8bit", "paged-adamw-8bit": "paged-adamw-8bit",
              "other:bnb.optim.Adam8bit": "adamw-8bit", "adafactor": "adafactor", "paged-adamw-32bit": "paged-adamw"}
LOSSES = {"standard": "standard", "liger-fused": "fused", "chunked": "chunked", None: "standard"}
CAVEAT = "caveat: "  # a note that says what the replay leaves out (shown beside the error)
AUTOCAST = re.compile(r"bf16=True|--bf16 True|bf16: true|Trainer autocast", re.I)
OWN_CODE = {
    "litgpt": ("litgpt's own model code (litgpt/model.py): q, k and v as one fused linear (LoRA on q or v is a "
               "slice of it), LoRA weights in bf16 with the model, F.scaled_dot_product_attention with is_causal "
               "and no mask, and a chunked cross-entropy over 128-token logit chunks in bf16 (predicted as "
               "torchtune's fp32 chunks)"),
    "torchtune": ("torchtune's own model code (TransformerDecoder): LoRA weights in the model dtype, its own "
                  "attention (sdpa without a mask, flex with a block mask when packed), a chunked cross-entropy "
                  "(8 chunks) and non-reentrant activation checkpointing"),
}


@dataclass(frozen=True)
class Mapped:
    """The peftcalc estimate inputs of a record's run."""

    spec: ModelSpec
    method: Method
    setup: Setup
    overhead: OverheadSpec
    notes: tuple[str, ...]  # how fields were read and what was assumed
    differences: tuple[str, ...] = ()  # where the framework's own code differs from transformers + peft
    caveats: tuple[str, ...] = ()  # what the run did that the replay leaves out


@dataclass(frozen=True)
class NotPredicted:
    reason: str


def map_record(r: PublishedRecord) -> Mapped | NotPredicted:
    try:
        return _map(r)
    except Unpredictable as e:
        return NotPredicted(str(e))
    except PeftcalcError as e:  # a setup peftcalc refuses
        return NotPredicted(f"peftcalc refuses the setup: {e}")


def _map(r: PublishedRecord) -> Mapped:
    quantization_of(r)  # an unmodelled quantization says so before the model does
    spec = _model(r)
    _check_moe_quantized(r, spec)
    method, caveats = method_of(r, spec)
    fields, notes = _setup_fields(r, spec.arch.family)
    setup = Setup(**fields)
    differences = (OWN_CODE[r.framework],) if r.framework in OWN_CODE else ()
    more = tuple(n[len(CAVEAT):] for n in notes if n.startswith(CAVEAT))
    notes = [n for n in notes if not n.startswith(CAVEAT)]
    return Mapped(spec, method, setup, _overhead(r), tuple(notes), differences, caveats + more + _kernels(r))


def _check_moe_quantized(r: PublishedRecord, spec: ModelSpec) -> None:
    version = r.versions.get("transformers")
    if spec.arch.num_experts and r.quantization is not None and (version is None or _version(version) < (5, 0)):
        raise Unpredictable("a quantized MoE under transformers < 5: its experts were nn.Linear modules bitsandbytes "
                            "quantized; peftcalc builds transformers 5's fused experts, which stay unquantized")


def _kernels(r: PublishedRecord) -> tuple[str, ...]:
    plugin = r.method_config.get("framework_config")
    if isinstance(plugin, str) and "foak" in plugin:
        return ("fms-acceleration's FOAK triton kernels (fused LoRA, RMSNorm, RoPE, cross-entropy) are not replayed: "
                "predicted with transformers' operators",)
    return ()


def _model(r: PublishedRecord) -> ModelSpec:
    from peftcalc.model.catalogue import get_model

    if r.hf_id is None:
        raise Unpredictable(f"the source names {r.model_name!r} but no Hugging Face model")
    try:
        return get_model(r.hf_id)
    except PeftcalcError:
        raise Unpredictable(f"model {r.hf_id} not in the catalogue") from None


def _setup_fields(r: PublishedRecord, family: str) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    if r.batch_size is None:
        raise Unpredictable("the batch size is not stated")
    if r.seq_len is None:
        raise Unpredictable("the sequence length is not stated")
    fields: dict[str, Any] = dict(batch_size=r.batch_size, seq_len=r.seq_len,
                                  gradient_accumulation=r.gradient_accumulation_steps or 1)
    fields["precision"] = _precision(r)
    fields.update(_optimizer(r, notes), **_checkpointing(r, notes), **_rows(r, notes), **_parallel(r, notes))
    fields["attention"] = _attention(r, family, fields.get("packing", False), notes)
    # litgpt's finetune scripts always chunk the head and loss; torchtune's recipes chunk unless a row says not
    fields["loss"] = "chunked" if r.framework == "litgpt" or (r.framework == "torchtune" and r.loss is None) \
        else LOSSES[r.loss]
    if r.quantization is not None:
        fields.update(_kbit(r, notes))
    version = _bitsandbytes_version(r)
    if version is not None and r.quantization is not None:
        fields["bitsandbytes_version"] = version
        notes.append(f"bitsandbytes {version}")
    fields["transformers_version"] = _transformers_version(r, notes)
    return fields, notes


# Who calls peft's prepare_model_for_kbit_training around a quantized base, and with which checkpointing:
# litgpt quantizes through Lightning Fabric's BitsandbytesPrecision and torchtune through torchao (neither calls
# it); Answer.AI's fsdp_qlora train.py replaces the linears itself; TRL's SFTTrainer (and fms-hf-tuning, built on
# it) calls it with use_gradient_checkpointing=args.gradient_checkpointing.
NO_KBIT_PREPARATION = ("litgpt", "torchtune", "other:answerai-fsdp_qlora")
KBIT_WITH_OWN_CHECKPOINTING = ("trl", "other:fms-hf-tuning")


def _kbit(r: PublishedRecord, notes: list[str]) -> dict[str, Any]:
    plugin = r.method_config.get("framework_config")
    if isinstance(plugin, str) and plugin.startswith("accelerated-peft"):
        # fms-acceleration's bnb plugin (framework_plugin_bnb.py) runs its own copy of prepare_model_for_kbit_training
        # without the fp32 upcast, with the run's gradient checkpointing
        notes.append("fms-acceleration's own kbit preparation: no fp32 upcast of the unquantized weights")
        return {"kbit_preparation": False}
    if r.framework.startswith(NO_KBIT_PREPARATION):
        notes.append("no prepare_model_for_kbit_training (the framework quantizes the base itself)")
        return {"kbit_preparation": False}
    if r.framework.startswith(KBIT_WITH_OWN_CHECKPOINTING):
        notes.append("prepare_model_for_kbit_training with the run's own gradient checkpointing (TRL's SFTTrainer)")
        return {"kbit_preparation": True, "kbit_gradient_checkpointing": bool(r.gradient_checkpointing)}
    notes.append("prepare_model_for_kbit_training as peft's QLoRA examples call it (checkpointing on)")
    return {}


def _transformers_version(r: PublishedRecord, notes: list[str]) -> str | None:
    """The version whose loss code ran: the stated one, else, for a source that ran before February 2025 (4.49,
    the first release without the logits' shift copy), 4.48; litgpt and torchtune compute their own loss."""
    if r.framework in ("litgpt", "torchtune"):
        return None
    stated = r.versions.get("transformers")
    if stated:
        return stated
    years = [int(y) for y in re.findall(r"\b(20[12]\d)\b", r.notes)]
    if years and max(years) <= 2024:
        notes.append(f"transformers not stated; the source ran in {max(years)}: before 4.49's loss")
        return "4.48"
    return None


def _precision(r: PublishedRecord) -> str:
    p = r.precision
    if p is None:
        raise Unpredictable("the precision is not stated")
    if p == "fp32":
        return "fp32"
    if p in ("bf16-mixed", "fp16-mixed"):
        return "amp-" + p[:4]
    if r.framework in ("litgpt", "torchtune") or "weights, LoRA and compute in bf16" in r.notes:
        return "bf16-true" if p == "bf16" else "fp16"  # litgpt, torchtune, Answer.AI's train.py: LoRA in bf16 too
    if p == "fp16":
        raise Unpredictable("fp16 weights with fp16 autocast not modelled")
    return "bf16-autocast" if AUTOCAST.search(r.precision_quote) else "bf16"


def _optimizer(r: PublishedRecord, notes: list[str]) -> dict[str, Any]:
    from peftcalc.optim import OPTIMIZERS as KNOWN

    if r.optimizer is None:
        notes.append("optimizer not stated: the framework's default AdamW")
        return {"optimizer": "adamw"}
    name = OPTIMIZERS.get(r.optimizer)
    years = [int(y) for y in re.findall(r"\b(20[12]\d)\b", r.notes)]
    if name == "adamw" and ("adamw_hf" in r.notes or (r.framework == "transformers" and years and max(years) <= 2022)):
        notes.append(CAVEAT + "transformers' own AdamW (the 2022 Trainer's default optim, adamw_hf): a "
                     "per-parameter loop, predicted as torch's for-loop AdamW")
        return {"optimizer": "adamw", "adamw_impl": "forloop"}
    if name == "paged-adamw" and name not in KNOWN:
        notes.append(CAVEAT + "bitsandbytes PagedAdamW (32-bit states in CUDA unified memory, outside PyTorch's "
                     "allocator) predicted as torch's AdamW, its states counted on the GPU")
        return {"optimizer": "adamw"}
    if name is None or name not in KNOWN:
        raise Unpredictable(f"optimizer {r.optimizer} not modelled")
    return {"optimizer": name}


def _reentrant(r: PublishedRecord) -> bool:
    if "--reentrant_checkpointing True" in r.notes:  # Answer.AI's train.py template command
        return True
    if r.framework in ("litgpt", "torchtune") or r.framework.startswith("other:answerai"):
        return False
    version = r.versions.get("transformers")
    return not (version is not None and int(version.split(".")[0]) >= 5)


def _checkpointing(r: PublishedRecord, notes: list[str]) -> dict[str, Any]:
    on = r.gradient_checkpointing
    if on is None:
        notes.append("gradient checkpointing not stated: off")
        on = False
    return {"gradient_checkpointing": on, "reentrant_checkpointing": on and _reentrant(r)}


def _rows(r: PublishedRecord, notes: list[str]) -> dict[str, Any]:
    kind = r.seq_len_kind
    if kind is None:
        notes.append(f"sequence kind not stated: {r.seq_len} tokens per row")
    if kind == "packed":
        return {"packing": True}
    if kind == "up-to":
        notes.append(f"up to {r.seq_len} tokens: predicted for a batch of {r.seq_len}-token rows (the longest batch, "
                     "if the dataset reaches the bound)")
    own = r.framework in ("litgpt", "torchtune")
    padded = kind in ("up-to", "max", "padded-to-max") and r.batch_size is not None and r.batch_size > 1 and not own
    return {"padded": padded}


def _parallel(r: PublishedRecord, notes: list[str]) -> dict[str, Any]:
    sharding, gpus = r.sharding or "none", r.gpus or 1
    if r.gpus is None:
        notes.append("GPUs not stated: one")
    if sharding == "none" or gpus == 1:
        return {"num_gpus": 1}
    if sharding == "ddp":
        return {"num_gpus": gpus}
    offload = sharding.endswith("-offload")
    stage = 2 if sharding == "deepspeed-zero2" else 3
    notes.append(f"{sharding} over {gpus} GPUs: ZeRO stage {stage}{' with offload' if offload else ''}, per GPU")
    notes.append(CAVEAT + f"{sharding} per-GPU bytes: peftcalc's stated ZeRO-3 approximation (sharded states, the "
                 "gathered root and two blocks), not yet checked against a sharded measurement; NCCL buffers and "
                 "the sharded runs' loading are not modelled")
    return {"num_gpus": gpus, "zero_stage": stage, "offload": offload, "offload_params": offload and stage == 3}


# transformers' first release whose models of a family default to sdpa (the family's `_supports_sdpa`); Llama-style
# decoders from 4.36 (Dec 2023), BERT/RoBERTa from 4.41 (May 2024), GPT-2 from 4.44 (Aug 2024)
SDPA_SINCE = {"bert": (4, 41), "roberta": (4, 41), "gpt2": (4, 44)}
SDPA_DEFAULT = (4, 36)


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _attention(r: PublishedRecord, family: str, packing: bool, notes: list[str]) -> str:
    a = r.attention
    if a in ("sdpa", "flash_attention_2", "eager"):
        return a
    if r.framework == "torchtune" and packing:
        return "flex_attention"
    if a == "framework-native" or r.framework in ("litgpt", "torchtune"):
        return "sdpa"
    since = SDPA_SINCE.get(family, SDPA_DEFAULT)
    version = r.versions.get("transformers")
    if version is not None:
        default = "sdpa" if _version(version) >= since else "eager"
        notes.append(f"attention not stated: transformers {version}'s default for {family}, {default}")
        return default
    years = [int(y) for y in re.findall(r"\b(20[12]\d)\b", r.notes)]
    if years:  # no version: the year the source ran in (sdpa defaults arrived Dec 2023 for Llama-style models)
        default = "sdpa" if min(years) >= (2024 if since == SDPA_DEFAULT else 2025) else "eager"
        notes.append(f"attention not stated: transformers of {min(years)}'s default for {family}, {default}")
        return default
    notes.append("attention not stated: transformers' default sdpa")
    return "sdpa"


def _bitsandbytes_version(r: PublishedRecord) -> str | None:
    v = r.versions.get("bitsandbytes")
    if v:
        return v
    m = re.search(r"(?:bitsandbytes|bnb)[^0-9]{0,12}(\d+\.\d+(?:\.\d+)?)", r.notes)
    return m.group(1) if m else None


def _overhead(r: PublishedRecord) -> OverheadSpec:
    major = next((v for k, v in CAPABILITY.items() if r.gpu_model and k in r.gpu_model), None)
    context = 1343 * 2**20 if "transformers-anatomy" in r.id else None  # the doc's own baseline (CUDA 11.2)
    return OverheadSpec(workspace=workspace_bytes(major), context=context)


def with_setup(m: Mapped, **changes: Any) -> Mapped:
    return replace(m, setup=replace(m.setup, **changes))
