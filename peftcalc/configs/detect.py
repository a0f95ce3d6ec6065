"""Which kind of training config a mapping is, from the fields that only one kind writes.

Kinds share keys (`model_name_or_path`, `bf16`, `gradient_accumulation_steps` are in TRL and LLaMA-Factory files
alike), so the most distinctive marks are checked first: peft's `peft_type`, torchtune's `_component_`, the launchers (accelerate, DeepSpeed), LLaMA-Factory's own
fields, axolotl's `base_model`, and last the TrainingArguments fields TRL and plain Trainer scripts use.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import InputError

KINDS = ("axolotl", "trl", "torchtune", "llamafactory", "peft", "deepspeed", "accelerate")
TRAINING_KINDS = KINDS[:5]  # the others launch a training config and say only how it is spread over GPUs

# LLaMA-Factory's own fields (hparams/*_args.py); two of them mark a classic LLaMA-Factory file.
LLAMAFACTORY_MARKS = frozenset({"finetuning_type", "stage", "cutoff_len", "lora_target", "template",
                                "quantization_bit", "pure_bf16", "neat_packing", "additional_target", "lora_rank",
                                "freeze_trainable_layers", "use_llama_pro", "mixture_of_depths", "use_galore",
                                "flash_attn", "disable_gradient_checkpointing", "enable_liger_kernel", "max_samples"})
LLAMAFACTORY_V1_MARKS = frozenset({"peft_config", "dist_config", "kernel_config", "quant_config", "train_dataset",
                                   "micro_batch_size", "model_class"})
AXOLOTL_MARKS = frozenset({"base_model", "sequence_len", "micro_batch_size", "num_epochs", "adapter",
                           "sample_packing", "lora_target_linear", "plugins", "datasets", "lora_model_dir"})
# transformers TrainingArguments, TRL's SFT/DPO configs and its ModelConfig (what `trl sft --config` reads).
TRAINER_MARKS = frozenset({"model_name_or_path", "per_device_train_batch_size", "num_train_epochs", "output_dir",
                           "optim", "gradient_checkpointing", "max_length", "max_seq_length", "packing",
                           "dataset_name", "dataset_mixture", "dataset_mixer", "use_peft", "lora_r", "torch_dtype",
                           "dtype", "learning_rate", "max_steps", "deepspeed", "fsdp", "use_liger_kernel",
                           "logging_steps", "save_strategy"})
HF_MODEL_CONFIG_MARKS = frozenset({"architectures", "model_type", "hidden_size", "num_hidden_layers"})


def detect(data: Mapping[str, Any], path: str) -> str:
    """The kind of config `data` is; a one-line error naming what was looked for when it is none of them."""
    keys = set(data)
    if "peft_type" in keys or {"model_id", "optimizer_type"} <= keys or keys == {"optimizer_kwargs"}:
        return "peft"
    if any(isinstance(v, Mapping) and "_component_" in v for v in data.values()):
        return "torchtune"
    if "distributed_type" in keys or "compute_environment" in keys:
        return "accelerate"
    if "zero_optimization" in keys or "train_micro_batch_size_per_gpu" in keys:
        return "deepspeed"
    if len(keys & LLAMAFACTORY_MARKS) >= 2 or "finetuning_type" in keys:
        return "llamafactory"
    if isinstance(data.get("model"), str) and keys & LLAMAFACTORY_V1_MARKS and "base_model" not in keys:
        return "llamafactory"
    if "base_model" in keys and (keys & AXOLOTL_MARKS) - {"base_model"} or "base_model" in keys and len(keys) == 1:
        return "axolotl"
    if keys & AXOLOTL_MARKS - {"datasets", "plugins"} and not keys & TRAINER_MARKS:
        return "axolotl"
    if keys & TRAINER_MARKS:
        return "trl"
    if len(keys & HF_MODEL_CONFIG_MARKS) >= 2:
        raise InputError(f"{path}: a model's config.json (model_type, hidden_size ...), not a training config; "
                         f"give it as --config {path}")
    raise InputError(f"{path}: not a training config peftcalc knows: none of the fields that mark an axolotl, "
                     "TRL/Trainer, torchtune, LLaMA-Factory, peft adapter_config.json, DeepSpeed or accelerate file "
                     "(base_model, model_name_or_path, _component_, finetuning_type, peft_type, zero_optimization, "
                     "distributed_type ...); if it is one, say which with --from-kind")
