"""LLaMA-Factory YAML, classic and v1 (hiyouga/LLaMA-Factory @ff6d4d12: src/llamafactory/hparams/model_args.py,
finetuning_args.py, data_args.py, parser.py; model/adapter.py `init_adapter`; model/model_utils/quantization.py;
v1/config/*.py).

Facts that decide the estimate:
- defaults: finetuning_type lora, lora_rank 8, lora_target all (every linear but the output layer), cutoff_len
  2048, gradient checkpointing on (disable_gradient_checkpointing False) and reentrant (use_reentrant_gc True),
  double quantization on; batch and epochs are transformers' (8, 3);
- the model loads in its checkpoint dtype, then trainable parameters are upcast to fp32 unless pure_bf16, or
  ZeRO-3 without quantization (init_adapter): full fine-tuning with bf16 is fp32 weights under bf16 autocast
  (peftcalc's amp-bf16), and LoRA keeps fp32 adapters on a bf16 base;
- quantization_bit 4/8 with the bnb method quantizes on the fly (compute and storage dtype = the compute dtype).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.configs.common import hf_checkpointing, hf_optimizer, ignore_prefixed
from peftcalc.configs.launchers import read_deepspeed_section, read_fsdp
from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig
from peftcalc.errors import PeftcalcError

IGNORED = dict.fromkeys((
    "dataset", "dataset_dir", "template", "tool_format", "default_system", "enable_thinking", "train_on_prompt",
    "mask_history", "preprocessing_num_workers", "preprocessing_batch_size", "overwrite_cache", "tokenized_path",
    "output_dir", "overwrite_output_dir", "plot_loss", "learning_rate", "lr_scheduler_type", "warmup_ratio",
    "warmup_steps", "weight_decay", "ddp_timeout", "resume_from_checkpoint", "trust_remote_code", "do_train",
    "do_eval", "do_predict", "predict_with_generate", "compute_accuracy", "pref_beta", "pref_loss", "lora_alpha",
    "use_rslora", "pissa_init", "pissa_iter", "pissa_convert", "loraplus_lr_ratio", "adapter_name_or_path",
    "create_new_adapter", "seed", "max_grad_norm", "report_to", "logging_steps", "run_name", "model_revision",
    "quantization_type", "quantization_device_map", "val_size", "mix_strategy", "interleave_probs", "streaming",
    "buffer_size", "cache_dir", "model_class", "train_dataset", "eval_dataset", "sample_backend", "max_new_tokens",
    "ignore_pad_token_for_loss", "new_special_tokens", "resize_vocab", "split_special_tokens", "use_fast_tokenizer",
    "print_param_status", "infer_backend", "export_dir", "save_safetensors"), NO_EFFECT)
IGNORED.pop("quantization_type")
IGNORED.update({"val_size": "the share of the data held out for evaluation: give --tokens for the training share",
                "per_device_eval_batch_size": "evaluation only"})
NOT_MODELLED = {
    "mixture_of_depths": "mixture-of-depths: not modelled (counted as the dense model)",
    "use_galore": "GaLore's low-rank optimizer states: not modelled (counted as --optimizer)",
    "use_apollo": "APOLLO's low-rank optimizer states: not modelled", "use_badam": "BAdam: not modelled",
    "use_adam_mini": "Adam-mini: not modelled", "use_muon": "Muon: not modelled",
    "use_llama_pro": "LLaMA Pro block expansion: not modelled", "shift_attn": "LongLoRA shifted attention: not modelled",
    "use_unsloth": "Unsloth kernels: not modelled", "use_unsloth_gc": "Unsloth's offloaded checkpointing: not modelled",
    "upcast_layernorm": "fp32 norms: not modelled", "upcast_lmhead_output": "fp32 logits: not modelled",
    "fp8": "FP8 training: not modelled", "use_kt": "KTransformers CPU experts: not modelled",
    "max_samples": "a cap on samples per dataset: the data size is given by --tokens",
    "save_steps": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_strategy": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_total_limit": "checkpoints kept: peftcalc gives one checkpoint's size",
    "save_only_model": "optimizer state left out of checkpoints: peftcalc gives the model's checkpoint",
    "kernel_config": "kernel plugins (Liger ...): not modelled", "cp_size": "context parallelism: not modelled",
    "torch_compile": "torch.compile: not modelled",
}
GALORE_FIELDS = ("galore_layerwise", "galore_target", "galore_rank", "galore_scale", "galore_update_interval",
                 "galore_proj_type")
FLASH_ATTN = {"auto": ("sdpa", "auto: flash-attn when installed, else sdpa; counted as sdpa"),
              "disabled": ("eager", ""), "sdpa": ("sdpa", ""), "fa2": ("flash_attention_2", ""),
              "fa3": ("flash_attention_2", "fa3: counted as flash_attention_2")}


def read_llamafactory(data: Mapping[str, Any], path: str) -> TrainingConfig:
    if isinstance(data.get("model"), str) and "model_name_or_path" not in data:
        from peftcalc.configs.llamafactory_v1 import read_v1

        return read_v1(data, path)
    r = Reading(path, "llamafactory", data)
    model = r.get("model_name_or_path")
    if model:
        r.used("model_name_or_path", f"the model: {model}", model_name=str(model))
        if any(q in str(model).lower() for q in ("gptq", "awq", "aqlm", "-fp8", "mxfp4")):
            r.warn(f"{model} looks pre-quantized: its config.json carries the quantization, which peftcalc does not "
                   "model (counted unquantized)")
    stage = r.get("stage", "sft")
    if stage not in ("sft", "pt"):
        r.warn(f"stage: {stage}: reward, PPO and preference stages run more models or sequences; peftcalc estimates "
               "the SFT step")
    r.used("stage", f"{stage}: the training step peftcalc estimates") if r.has("stage") else None
    method = _method(r)
    ds = read_deepspeed_section(r, "deepspeed")
    _precision(r, method, ds is not None and r.values.get("zero") is not None)
    hf_optimizer(r, "optim", whose="transformers")
    _step(r, stage)
    _recipe(r)
    for key, why in NOT_MODELLED.items():
        r.not_modelled(key, why)
    for key in GALORE_FIELDS:
        r.ignored(key, "GaLore's settings (GaLore is not modelled)" if r.get("use_galore") else "use_galore is off")
    ignore_prefixed(r, ("hub_", "swanlab_", "wandb_", "dataloader_", "eval_", "infer_", "vllm_", "sglang_", "export_",
                        "freeze_", "oft_", "per_device_eval"))
    return r.finish(IGNORED)


def _method(r: Reading) -> str:
    kind = r.get("finetuning_type")
    bits = r.get("quantization_bit")
    if kind is None:
        r.default("finetuning_type", "lora", "--method lora (LLaMA-Factory's default)")
        kind = "lora"
    if bits is not None and kind not in ("lora", "oft"):
        raise r.error("quantization_bit", f"with finetuning_type {kind}: LLaMA-Factory allows quantization only with "
                                          "lora or oft")
    if kind in ("freeze", "oft"):
        from peftcalc.methods import METHODS

        if kind not in METHODS:
            raise PeftcalcError(f"{r.path}: finetuning_type: {kind} is not a method peftcalc models yet")
    if kind == "full":
        r.used("finetuning_type", "--method full", method="full")
        return "full"
    if kind != "lora":
        r.used("finetuning_type", f"--method {kind}", method=kind)
        return kind
    dora = r.get("use_dora") is True
    method = "dora" if dora else "lora"
    if bits is not None:
        method = _quantized(r, bits, dora)
    r.used("finetuning_type", f"--method {method}", method=method) if r.has("finetuning_type") else r.set(method=method)
    if dora:
        r.used("use_dora", "DoRA" if method == "dora" else "DoRA over a quantized base: counted as QLoRA without the "
                                                             "magnitude vectors")
    rank = r.get("lora_rank")
    r.used("lora_rank", f"--rank {rank}", rank=int(rank)) if rank is not None else \
        r.default("lora_rank", 8, "--rank 8 (LLaMA-Factory's default)", rank=8)
    target = r.get("lora_target", "all")
    targets = "all-linear" if str(target).strip() == "all" else ",".join(t.strip() for t in str(target).split(","))
    why = "every linear but the output layer" if targets == "all-linear" else "the modules named"
    r.used("lora_target", f"--targets {targets} ({why})", targets=targets) if r.has("lora_target") else \
        r.default("lora_target", "all", f"--targets all-linear ({why}; LLaMA-Factory's default)", targets=targets)
    extra = r.get("additional_target")
    if extra:
        names = ",".join(t.strip() for t in str(extra).split(","))
        r.used("additional_target", f"--modules-to-save {names} (full trainable copies)", modules_to_save=names)
    dropout = r.get("lora_dropout")
    if dropout:
        r.used("lora_dropout", f"--lora-dropout {dropout}", lora_dropout=float(dropout))
    elif dropout is not None:
        r.ignored("lora_dropout", "0: no dropout")
    return method


def _quantized(r: Reading, bits: Any, dora: bool) -> str:
    how = r.get("quantization_method", "bnb")
    if how != "bnb":
        raise PeftcalcError(f"{r.path}: quantization_method: {how} is not modelled (bitsandbytes, bnb, is)")
    if str(bits) not in ("4", "8"):
        raise r.error("quantization_bit", f"{bits}: bitsandbytes quantizes to 4 or 8 bits")
    r.used("quantization_bit", f"--method qlora --quant-bits {bits} (bitsandbytes)", method="qlora",
           quant_bits=str(bits))
    if r.has("quantization_method"):
        r.used("quantization_method", "bitsandbytes")
    if str(bits) == "4":
        double = r.get("double_quantization", True) is not False
        r.used("double_quantization", "--double-quant" if double else "--no-double-quant", double_quant=double) \
            if r.has("double_quantization") else None
        if r.has("quantization_type"):
            r.used("quantization_type", f"--quant-type {r.get('quantization_type')}",
                   quant_type=str(r.get("quantization_type")))
        r.default("bnb_4bit_quant_storage", "the compute dtype", "--quant-storage bf16 (LLaMA-Factory stores the "
                  "packed codes in the compute dtype, quantization.py)", quant_storage="bf16")
    return "qlora"


def _precision(r: Reading, method: str, deepspeed: bool) -> None:
    pure, bf16, fp16 = r.get("pure_bf16") is True, r.get("bf16") is True, r.get("fp16") is True
    if bf16 and fp16:
        raise r.error("bf16", "and fp16 are both true (TrainingArguments: at most one of them)")
    if pure and deepspeed and r.values.get("zero") == "3":
        raise r.error("pure_bf16", "with DeepSpeed ZeRO-3: LLaMA-Factory refuses the pair")
    half = "fp16" if fp16 and not pure else "bf16"
    zero3 = r.values.get("zero") == "3" and deepspeed
    if deepspeed:
        recipe, why = f"{half}-mixed", "DeepSpeed keeps fp32 master weights and optimizer states"
    elif pure:
        recipe, why = "bf16", "pure_bf16: every parameter in bf16, no fp32 upcast"
    elif method == "full":
        recipe, why = "amp-bf16" if half == "bf16" else "fp16-mixed", "trainable parameters upcast to fp32 " \
            "(init_adapter), computed under autocast"
    else:
        recipe, why = ("bf16" if half == "bf16" else "fp16-mixed"), "the base in its checkpoint dtype, adapters " \
            "upcast to fp32"
    key = "pure_bf16" if pure else "bf16" if bf16 else "fp16" if fp16 else None
    detail = f"--precision {recipe}: {why}"
    if key:
        r.used(key, detail, precision=recipe)
    else:
        r.default("bf16", "inferred", detail + " (no bf16/fp16: LLaMA-Factory infers bf16 where the GPU has it)",
                  precision=recipe)
    if zero3 and method in ("lora", "dora") and not pure:
        r.default("adapter dtype", half, "ZeRO-3 without quantization: adapters stay in the model dtype "
                  "(init_adapter)", adapter_dtype=half)


def _step(r: Reading, stage: str) -> None:
    batch = r.get("per_device_train_batch_size")
    r.used("per_device_train_batch_size", f"--batch {batch}", batch=int(batch)) if batch is not None else \
        r.default("per_device_train_batch_size", 8, "--batch 8 (transformers' default)", batch=8)
    accumulation = r.get("gradient_accumulation_steps")
    if accumulation is not None:
        r.used("gradient_accumulation_steps", f"--gradient-accumulation {accumulation}",
               gradient_accumulation=int(accumulation))
    cutoff = r.get("cutoff_len")
    r.used("cutoff_len", f"--seq {cutoff}", seq=int(cutoff)) if cutoff is not None else \
        r.default("cutoff_len", 2048, "--seq 2048 (LLaMA-Factory's default)", seq=2048)
    packing = r.get("packing", stage == "pt") or r.get("neat_packing") is True
    for key in ("packing", "neat_packing"):
        if r.get(key) is True:
            r.used(key, "packing: every row filled to cutoff_len" + (" (no attention across samples)"
                                                                       if key == "neat_packing" else ""), packing=True)
        elif r.has(key):
            r.ignored(key, "false")
    if packing and not r.has("packing") and not r.has("neat_packing"):
        r.default("packing", True, "packing (LLaMA-Factory packs pre-training data)", packing=True)
    if not packing:
        r.default("padding", "to the longest", "each batch padded to its longest sample (a multiple of 8), with an "
                  "attention mask", padded=True)
        r.warn("without packing LLaMA-Factory pads each batch to its longest sample: cutoff_len is an upper bound")
    epochs, steps = r.get("num_train_epochs"), r.get("max_steps")
    if steps is not None and int(steps) > 0:
        r.used("max_steps", f"--steps {steps} (wins over num_train_epochs)", steps=int(steps))
        r.ignored("num_train_epochs", "max_steps decides") if epochs is not None else None
    elif epochs is not None:
        r.used("num_train_epochs", f"--epochs {epochs}", epochs=float(epochs))
    else:
        r.default("num_train_epochs", 3, "--epochs 3 (transformers' default)", epochs=3.0)


def _recipe(r: Reading) -> None:
    off = r.get("disable_gradient_checkpointing") is True
    if r.has("disable_gradient_checkpointing"):
        r.used("disable_gradient_checkpointing", "no gradient checkpointing" if off else "--gradient-checkpointing",
               gradient_checkpointing=not off)
    else:
        r.default("disable_gradient_checkpointing", False, "--gradient-checkpointing (LLaMA-Factory checkpoints by "
                  "default)", gradient_checkpointing=True)
    if not off:
        reentrant = r.get("use_reentrant_gc", True)
        r.used("use_reentrant_gc", "reentrant checkpointing" if reentrant else "non-reentrant checkpointing",
               reentrant_checkpointing=bool(reentrant)) if r.has("use_reentrant_gc") else \
            r.default("use_reentrant_gc", True, "reentrant checkpointing (LLaMA-Factory's default)",
                      reentrant_checkpointing=True)
    hf_checkpointing(r, False, "gradient_checkpointing_kwargs", False, "")
    flash = str(r.get("flash_attn", "auto"))
    kernel, note = FLASH_ATTN.get(flash, ("sdpa", f"{flash}: counted as sdpa"))
    r.used("flash_attn", f"--attention {kernel}" + (f" ({note})" if note else ""), attention=kernel) \
        if r.has("flash_attn") else r.default("flash_attn", "auto", f"--attention {kernel} ({note})", attention=kernel)
    if r.get("enable_liger_kernel") is True:
        r.used("enable_liger_kernel", "--loss fused (Liger's fused linear cross-entropy: no logits kept; its other "
                                      "kernels not modelled)", loss="fused")
    elif r.has("enable_liger_kernel"):
        r.ignored("enable_liger_kernel", "false")
    read_fsdp(r, "fsdp", "fsdp_config")
