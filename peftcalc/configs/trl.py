"""TRL and transformers Trainer configs: TrainingArguments, TRL's SFTConfig/DPOConfig and ModelConfig fields, as
`trl sft --config FILE` reads them (huggingface/trl @f2cd5771, after v1.9: trainer/sft_config.py, base_config.py,
model_config.py, sft_trainer.py; transformers 5.24 training_args.py, modeling_utils.py).

A file with TRL's own fields (model_name_or_path, use_peft, max_length, packing, dataset_name ...) is read with
TRL's defaults, a bare TrainingArguments file with transformers' (the two differ):
- TRL: gradient_checkpointing True, bf16 True unless fp16, max_length 1024, and the SFT loss `chunked_nll` (the
  head applied to non-ignored tokens, the cross-entropy in chunks) unless use_liger_kernel; ModelConfig.dtype
  float32, so a file without `dtype` trains fp32 weights under bf16 autocast;
- TRL casts the adapters of a 4-bit model to bf16 (`peft_module_casting_to_bf16`, unless FSDP/ZeRO-3 shards it);
- transformers: per_device_train_batch_size 8, num_train_epochs 3, optim adamw_torch_fused, non-reentrant
  gradient checkpointing (modeling_utils: use_reentrant False when no kwargs are given).
The alignment-handbook recipes use keys current TRL renamed (`torch_dtype`, `max_seq_length`): read as aliases.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.configs.common import hf_attention, hf_checkpointing, hf_optimizer, ignore_prefixed
from peftcalc.configs.hf import DTYPES
from peftcalc.configs.launchers import read_deepspeed_section, read_fsdp
from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig

TRL_MARKS = frozenset({"model_name_or_path", "use_peft", "max_length", "max_seq_length", "packing", "dataset_name",
                       "dataset_mixture", "dataset_mixer", "loss_type", "lora_r", "completion_only_loss",
                       "assistant_only_loss", "dataset_text_field", "beta", "max_prompt_length", "torch_dtype", "dtype",
                       "load_in_4bit", "load_in_8bit", "padding_free", "activation_offloading"})
DPO_MARKS = frozenset({"beta", "max_prompt_length", "precompute_ref_log_probs", "rpo_alpha", "ref_model_init_kwargs"})
IGNORED = dict.fromkeys((
    "dataset_name", "dataset_config", "dataset_mixture", "dataset_mixer", "dataset_splits", "dataset_train_split",
    "dataset_test_split", "dataset_num_proc", "dataset_text_field", "dataset_kwargs", "chat_template",
    "chat_template_path", "eos_token", "pad_token", "completion_only_loss", "assistant_only_loss", "output_dir",
    "overwrite_output_dir", "run_name", "report_to", "log_level", "push_to_hub", "model_revision",
    "trust_remote_code", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio",
    "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed",
    "do_eval", "do_train", "eval_strategy", "eval_steps", "remove_unused_columns", "ddp_timeout", "env",
    "truncation_mode", "shuffle_dataset", "neftune_noise_alpha", "beta", "label_smoothing", "lora_task_type",
    "router_aux_loss_coef", "average_tokens_across_devices", "lora_alpha", "use_rslora",
    "packing_strategy", "pad_to_multiple_of", "dataloader_num_workers", "logging_steps", "logging_strategy",
    "evaluation_strategy", "ddp_find_unused_parameters", "use_flash_attention_2", "base_model_revision",
    "model_code_revision", "tf32", "torch_empty_cache_steps", "max_prompt_length", "disable_tqdm",
    "include_num_input_tokens_seen", "eval_packing", "accelerate_config"), NO_EFFECT)
IGNORED.update({"tf32": "TF32 matmuls: the speed of fp32 matmuls only", "per_device_eval_batch_size":
                "evaluation only"})
NOT_MODELLED = {
    "activation_offloading": "activations kept in CPU memory: not modelled",
    "torch_compile": "torch.compile: speed and fusions, not modelled",
    "optim_target_modules": "GaLore/APOLLO targets: not modelled",
    "lora_target_parameters": "LoRA on MoE parameter tensors: not modelled",
    "padding_free": "padding-free batches: counted as padded rows of max_length",
    "auto_find_batch_size": "the Trainer halves the batch on out-of-memory: the batch asked is estimated",
    "precompute_ref_log_probs": "DPO: no reference model in memory: not modelled",
    "save_strategy": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_steps": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_total_limit": "checkpoints kept: peftcalc gives one checkpoint's size",
    "save_only_model": "optimizer state left out of checkpoints: peftcalc gives the model's checkpoint",
    "liger_kernel_config": "which Liger kernels: counted as all of them (the fused cross-entropy)",
}


def read_trl(data: Mapping[str, Any], path: str) -> TrainingConfig:
    r = Reading(path, "trl", data)
    trl = bool(set(data) & TRL_MARKS)
    whose = "TRL" if trl else "transformers"
    if set(data) & DPO_MARKS:
        r.warn("a preference (DPO) config: each sample is a chosen and a rejected sequence, and a reference model "
               "runs beside the policy; peftcalc estimates the SFT step of one sequence per sample")
    model = r.get("model_name_or_path")
    if model:
        r.used("model_name_or_path", f"the model: {model}", model_name=str(model))
    method = _method(r, trl)
    ds = read_deepspeed_section(r, "deepspeed")
    fsdp = read_fsdp(r, "fsdp", "fsdp_config")
    _precision(r, trl, method, ds, fsdp)
    hf_optimizer(r, "optim", whose="transformers")
    _step(r, trl, whose)
    _recipe(r, trl, whose)
    _launcher(r)
    for key, why in NOT_MODELLED.items():
        r.not_modelled(key, why)
    ignore_prefixed(r)
    return r.finish(IGNORED, containers=("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs",
                                         "fsdp_config"))


def _method(r: Reading, trl: bool) -> str:
    peft = r.get("use_peft") is True
    four, eight = r.get("load_in_4bit") is True, r.get("load_in_8bit") is True
    if four and eight:
        raise r.error("load_in_4bit", "and load_in_8bit are both true (TRL's ModelConfig: \"You can't use 8 bit and "
                                      "4 bit precision at the same time\")")
    if (four or eight) and not peft:
        raise r.error("load_in_4bit" if four else "load_in_8bit", "a quantized base without use_peft: true; the "
                      "Trainer refuses to fine-tune a purely quantized model")
    if not peft:
        for key in ("lora_r", "lora_target_modules", "lora_modules_to_save", "lora_dropout", "use_dora"):
            r.ignored(key, "use_peft is not set: full fine-tuning")
        if r.lookup("use_peft") is not False and trl:
            r.default("use_peft", False, "full fine-tuning (TRL's ModelConfig default)", method="full")
        else:
            r.used("use_peft", "full fine-tuning", method="full") if r.lookup("use_peft") is False else \
                r.set(method="full")
        return "full"
    dora = r.get("use_dora") is True
    if four or eight:
        bits = "4" if four else "8"
        r.used("use_peft", f"--method qlora --quant-bits {bits}" + (" (use_dora: counted as QLoRA without the "
                                                                    "magnitude vectors)" if dora else ""),
               method="qlora", quant_bits=bits)
        r.used("load_in_4bit" if four else "load_in_8bit", f"the base in {bits}-bit (bitsandbytes)")
        if four:
            _bnb(r)
        method = "qlora"
    else:
        method = "dora" if dora else "lora"
        r.used("use_peft", f"--method {method}", method=method)
    if dora:
        r.used("use_dora", "DoRA")
    _lora(r)
    return method


def _bnb(r: Reading) -> None:
    """ModelConfig's BitsAndBytesConfig fields (trl/trainer/utils.py get_quantization_config)."""
    nested = r.get("use_bnb_nested_quant")
    if nested is None:
        r.default("use_bnb_nested_quant", False, "--no-double-quant (TRL's ModelConfig default)", double_quant=False)
    else:
        r.used("use_bnb_nested_quant", "--double-quant" if nested else "--no-double-quant", double_quant=bool(nested))
    kind = r.get("bnb_4bit_quant_type")
    if kind is not None:
        r.used("bnb_4bit_quant_type", f"--quant-type {kind}", quant_type=str(kind))
    storage = r.get("bnb_4bit_quant_storage")
    if storage is not None:
        dtype = DTYPES.get(str(storage).lower(), "uint8" if str(storage).lower() == "uint8" else None)
        if dtype is None:
            raise r.error("bnb_4bit_quant_storage", f"{storage!r} is not a storage dtype (uint8, bfloat16 ...)")
        r.used("bnb_4bit_quant_storage", f"--quant-storage {dtype}", quant_storage=dtype)


def _lora(r: Reading) -> None:
    rank = r.get("lora_r")
    if rank is None:
        r.default("lora_r", 16, "--rank 16 (TRL's ModelConfig default)", rank=16)
    else:
        r.used("lora_r", f"--rank {rank}", rank=int(rank))
    targets = r.get("lora_target_modules")
    if targets:
        names = [targets] if isinstance(targets, str) else [str(t) for t in targets]
        r.used("lora_target_modules", f"--targets {','.join(names)}", targets=",".join(names))
    save = r.get("lora_modules_to_save")
    if save:
        names = [save] if isinstance(save, str) else [str(s) for s in save]
        r.used("lora_modules_to_save", f"--modules-to-save {','.join(names)}", modules_to_save=",".join(names))
    dropout = r.get("lora_dropout")
    if dropout is None:
        r.default("lora_dropout", 0.05, "--lora-dropout 0.05 (TRL's ModelConfig default)", lora_dropout=0.05)
    elif dropout:
        r.used("lora_dropout", f"--lora-dropout {dropout}", lora_dropout=float(dropout))
    else:
        r.ignored("lora_dropout", "0: no dropout")


def _dtype(r: Reading, trl: bool) -> tuple[str, str | None, str]:
    """The dtype the weights load in, the field that said so (None: the default), and a word on an old alias."""
    for key in ("dtype", "torch_dtype"):
        if r.has(key):
            value = DTYPES.get(str(r.get(key)).lower())
            if value is None:
                raise r.error(key, f"{r.get(key)!r} is not a dtype (bfloat16, float16, float32, auto)")
            alias = " (torch_dtype: renamed dtype in TRL 0.23, removed in 0.27; read as dtype)" if key == "torch_dtype" \
                else ""
            return value, key, alias
    return ("fp32" if trl else "auto"), None, ""


def _precision(r: Reading, trl: bool, method: str, ds: dict | None, fsdp: bool) -> None:
    weights, key, alias = _dtype(r, trl)
    if weights == "auto":
        weights = "bf16"
        note = "the checkpoint's dtype (dtype auto), bf16 for the models peftcalc knows"
    else:
        note = f"weights loaded in {weights}"
    fp16 = r.get("fp16") is True
    bf16 = r.get("bf16", trl and not fp16) is True
    if bf16 and fp16:
        raise r.error("bf16", "and fp16 are both true (TrainingArguments: at most one of them)")
    half = "bf16" if bf16 else "fp16" if fp16 else None
    if ds is not None and r.values.get("zero") is not None:
        recipe = f"{half}-mixed" if half else "fp32"
        why = "DeepSpeed keeps fp32 master weights and optimizer states"
    elif weights == "fp32":
        recipe = "amp-bf16" if half else "fp32"
        why = f"fp32 weights, {half} autocast" + (" (fp16 autocast holds the same bytes)" if half == "fp16" else "") \
            if half else "fp32 weights, no autocast"
    elif weights == "bf16":
        recipe, why = "bf16", "bf16 weights, gradients and optimizer states"
    else:
        recipe, why = "fp16-mixed", "fp16 weights"
        if method == "full":
            r.warn("full fine-tuning of fp16 weights: the Trainer's GradScaler cannot unscale fp16 gradients; "
                   "load in float32 or bfloat16")
    detail = f"--precision {recipe}: {note}; {why}"
    if key:
        r.used(key, detail + alias, precision=recipe)
    else:
        r.default("dtype", "float32" if trl else "auto", detail + (" (TRL's ModelConfig default)" if trl else
                  " (transformers' from_pretrained default)"), precision=recipe)
    if r.has("bf16"):
        r.used("bf16", f"{'bf16 autocast' if bf16 else 'no bf16 autocast'} (with {recipe})")
    elif trl and bf16:
        r.default("bf16", True, "bf16 autocast (TRL's default unless fp16)")
    if r.has("fp16"):
        r.used("fp16", "fp16 autocast" if fp16 else "off")
    _adapter_dtype(r, method, bf16, ds, fsdp, weights)


def _adapter_dtype(r: Reading, method: str, bf16: bool, ds: dict | None, fsdp: bool, weights: str) -> None:
    sharded = fsdp or r.values.get("zero") == "3"
    if method == "qlora" and r.get("load_in_4bit") is True and bf16 and not sharded:
        r.default("adapter dtype", "bf16", "TRL casts a 4-bit model's adapters to bf16 (peft_module_casting_to_bf16)",
                  adapter_dtype="bf16")
    elif method in ("lora", "dora") and r.values.get("zero") == "3" and weights != "fp32":
        r.default("adapter dtype", weights, "ZeRO-3 without quantization: TRL passes autocast_adapter_dtype=False, "
                  "adapters in the model dtype", adapter_dtype=weights)


def _step(r: Reading, trl: bool, whose: str) -> None:
    batch = r.get("per_device_train_batch_size")
    if batch is None:
        r.default("per_device_train_batch_size", 8, f"--batch 8 ({whose}'s default)", batch=8)
    else:
        r.used("per_device_train_batch_size", f"--batch {batch}", batch=int(batch))
    accumulation = r.get("gradient_accumulation_steps")
    if accumulation is not None:
        r.used("gradient_accumulation_steps", f"--gradient-accumulation {accumulation}",
               gradient_accumulation=int(accumulation))
    for key in ("max_length", "max_seq_length"):
        if r.has(key):
            alias = " (max_seq_length: removed in TRL 0.20, read as max_length)" if key == "max_seq_length" else ""
            r.used(key, f"--seq {r.get(key)}{alias}", seq=int(r.get(key)))
            break
    else:
        if trl:
            r.default("max_length", 1024, "--seq 1024 (TRL's default)", seq=1024)
        else:
            r.warn("the file does not say the sequence length (the script's tokenizer call does): --seq stands")
    if r.get("packing") is True:
        if "max_length" in r.data and r.data["max_length"] is None:
            raise r.error("packing", "needs max_length (TRL: \"When packing is enabled, max_length can't be None\")")
        r.used("packing", "packing: every row filled to max_length", packing=True)
    elif r.has("packing"):
        r.ignored("packing", "false")
    if r.get("packing") is not True and r.get("padding_free") is not True:
        r.default("padding", "to the longest", "the collator pads each batch to its longest sample, with an "
                  "attention mask", padded=True)
    epochs, steps = r.get("num_train_epochs"), r.get("max_steps")
    if steps is not None and int(steps) > 0:
        r.used("max_steps", f"--steps {steps} (wins over num_train_epochs)", steps=int(steps))
        r.ignored("num_train_epochs", "max_steps decides") if epochs is not None else None
    else:
        if steps is not None:
            r.ignored("max_steps", f"{steps}: off, num_train_epochs decides")
        if epochs is None:
            r.default("num_train_epochs", 3, f"--epochs 3 ({whose}'s default)", epochs=3.0)
        else:
            r.used("num_train_epochs", f"--epochs {epochs}", epochs=float(epochs))


def _recipe(r: Reading, trl: bool, whose: str) -> None:
    key = "gradient_checkpointing" if r.lookup("gradient_checkpointing") is not None or not r.has(
        "activation_checkpointing") else "activation_checkpointing"
    gc = r.get(key)
    on = bool(gc) if gc is not None else trl
    if gc is None and trl:
        r.default(key, True, "--gradient-checkpointing (TRL's default since 0.22)", gradient_checkpointing=True)
    elif gc is not None:
        r.used(key, "--gradient-checkpointing" if on else "off", gradient_checkpointing=on)
    kwargs = "activation_checkpointing_kwargs" if r.has("activation_checkpointing_kwargs") else \
        "gradient_checkpointing_kwargs"
    hf_checkpointing(r, on, kwargs, False, "transformers' default: use_reentrant False")
    hf_attention(r, "attn_implementation")
    liger = r.get("use_liger_kernel") is True
    loss_type = r.get("loss_type")
    if liger and loss_type == "chunked_nll":
        raise r.error("loss_type", "chunked_nll does not combine with use_liger_kernel (TRL's SFTConfig)")
    if liger:
        r.used("use_liger_kernel", "--loss fused (Liger's fused linear cross-entropy: no logits kept; its other "
                                   "kernels not modelled)", loss="fused")
    if loss_type is not None:
        if loss_type == "chunked_nll":
            r.used("loss_type", "--loss chunked", loss="chunked")
        elif loss_type in ("nll", "dft"):
            r.used("loss_type", f"{loss_type}: the standard loss over full logits", loss="standard")
        else:
            r.ignored("loss_type", f"{loss_type}: a preference loss shape, no memory effect of its own")
    elif trl and not liger and not set(r.data) & DPO_MARKS:
        r.default("loss_type", "chunked_nll", "--loss chunked (TRL's SFT default since 1.7)", loss="chunked")


def _launcher(r: Reading) -> None:
    """`trl <command> --config` passes unknown keys to `accelerate launch`: num_processes, accelerate_config."""
    processes = r.get("num_processes")
    if isinstance(processes, int) and processes > 0:
        r.used("num_processes", f"--gpus {processes} (passed to accelerate launch)", gpus=processes)
    named = r.get("accelerate_config")
    zero = {"zero1": "1", "zero2": "2", "zero3": "3", "fsdp1": "3", "fsdp2": "3", "multi_gpu": "0",
            "single_gpu": "0"}.get(str(named)) if named else None
    if zero is not None:
        impl = {"fsdp1": "fsdp1", "fsdp2": "fsdp2"}.get(str(named), "deepspeed" if str(named).startswith("zero") else None)
        r.used("accelerate_config", f"TRL's {named} launcher: --zero {zero}", zero=zero,
               **({"sharding": impl} if impl else {}))
