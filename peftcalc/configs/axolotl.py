"""axolotl YAML: what each field does, read from axolotl's code (axolotl-ai-cloud/axolotl @067b021c:
src/axolotl/utils/schemas/*.py for fields and defaults, utils/config/__init__.py `normalize_config` and
`resolve_dtype`, loaders/model.py `_set_quantization_config` and the kbit preparation, integrations/liger and
integrations/cut_cross_entropy).

Facts that decide the estimate:
- only `adapter: qlora` + `load_in_4bit` builds a 4-bit base (NF4, double quantization, compute dtype = the model
  dtype), and only `adapter: lora` + `load_in_8bit` an 8-bit one; `adapter: lora` + `load_in_4bit` loads the base
  unquantized yet still runs peft's prepare_model_for_kbit_training;
- `bf16: auto` (the default) loads the model in bf16 on a GPU that has it: without DeepSpeed every weight,
  gradient and AdamW state is bf16 (peftcalc's `bf16`); DeepSpeed's bf16 keeps fp32 master weights (`bf16-mixed`);
- gradient checkpointing without `gradient_checkpointing_kwargs` is reentrant (normalize_config sets
  use_reentrant: True unless unfrozen_parameters or rl is set);
- the default optimizer is adamw_torch_fused; `micro_batch_size` defaults to 1, `sequence_len` to 512.
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.configs.common import hf_attention, hf_checkpointing, hf_optimizer, ignore_prefixed
from peftcalc.configs.launchers import fsdp_version, read_deepspeed_section, read_fsdp
from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig
from peftcalc.errors import PeftcalcError

IGNORED = dict.fromkeys((
    "datasets", "dataset_prepared_path", "chat_template", "special_tokens", "eot_tokens", "train_on_inputs",
    "output_dir", "use_tensorboard", "learning_rate", "lr_scheduler", "lr_scheduler_kwargs", "cosine_min_lr_ratio",
    "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon",
    "seed", "evals_per_epoch", "resume_from_checkpoint", "lora_model_dir", "strict", "ddp_find_unused_parameters",
    "ddp_timeout", "model_type", "tokenizer_type", "save_first_step", "early_stopping_patience",
    "neftune_noise_alpha", "experimental_skip_move_to_device", "use_kernels", "trust_remote_code",
    "eval_sample_packing", "tokenizer_config", "tokenizer_use_fast", "is_llama_derived_model",
    "is_mistral_derived_model", "is_qwen_derived_model", "min_sample_len", "debug", "save_safetensors",
    "lora_alpha", "peft_use_rslora", "group_by_length", "lr_quadratic_warmup", "logging_steps", "shuffle_merged_datasets",
    "dataset_processes", "default_system_message", "chat_template_jinja", "field_messages"), NO_EFFECT)
IGNORED.update({
    "tokens": "tokens added to the vocabulary: a few embedding rows", "val_set_size": "the share of the data held out "
    "for evaluation: give --tokens for the training share", "tf32": "TF32 matmuls: the speed of fp32 matmuls only",
    "pad_to_sequence_len": "every batch padded to sequence_len, which --seq already assumes",
    "eval_batch_size": "evaluation only", "torch_dtype": "resolved from bf16/fp16", "plugins": NO_EFFECT})
NOT_MODELLED = {
    "unfrozen_parameters": "only the parameters these patterns match train: not modelled, the method counts as "
                           "written",
    "activation_offloading": "activations kept in CPU memory: not modelled (GPU activations are lower)",
    "layer_offloading": "parameters moved to CPU memory between forward and backward: not modelled",
    "tiled_mlp": "the MLP computed in sequence tiles: not modelled (activations are lower)",
    "context_parallel_size": "the sequence split over GPUs (ring attention): not modelled",
    "torch_compile": "torch.compile: speed (and fusions that save activations), not modelled",
    "flash_attn_cross_entropy": "flash-attn's cross-entropy kernel: not modelled",
    "flash_attn_fuse_mlp": "a fused MLP kernel: not modelled", "fused_attn_kernel": "a fused attention kernel: not "
    "modelled", "lora_mlp_kernel": "axolotl's fused LoRA MLP kernel: speed and saved activations, not modelled",
    "lora_qkv_kernel": "axolotl's fused LoRA QKV kernel: not modelled",
    "lora_o_kernel": "axolotl's fused LoRA output kernel: not modelled", "fp8": "FP8 training: not modelled",
    "rl": "a preference/RL stage (2 sequences per sample, a reference model): not modelled, estimated as SFT",
    "reward_model": "a reward-model head: not modelled", "process_reward_model": "a reward-model head: not modelled",
    "gptq": "a GPTQ-quantized base: not modelled, counted unquantized",
    "lora_target_parameters": "LoRA on MoE parameter tensors: not modelled",
    "peft_layers_to_transform": "adapting a subset of layers: not modelled (every layer counted)",
    "lora_rank_pattern": "per-module ranks: not modelled (lora_r everywhere)",
    "lora_alpha_pattern": NO_EFFECT, "peft_trainable_token_indices": "a few trainable embedding rows: not modelled",
    "saves_per_epoch": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_steps": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "save_total_limit": "checkpoints kept: peftcalc gives one checkpoint's size",
    "save_only_model": "optimizer state left out of checkpoints: peftcalc gives the model's checkpoint",
    "liger_rope": "Liger's RoPE kernel: small activation savings, not modelled",
    "liger_rms_norm": "Liger's RMSNorm kernel: small activation savings, not modelled",
    "liger_glu_activation": "Liger's SwiGLU kernel: activation savings, not modelled",
    "liger_swiglu": "Liger's SwiGLU kernel: activation savings, not modelled",
    "liger_layer_norm": "Liger's LayerNorm kernel: not modelled",
    "liger_cross_entropy": "Liger's cross-entropy without the fused head: not modelled",
    "dp_shard_size": "sharded data-parallel group size: give --gpus", "dp_replicate_size": "give --gpus",
    "bnb_config_kwargs": "overrides of the 4-bit config (NF4 with double quantization counted): not modelled",
}
ATTENTION_FLAGS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "flex_attention": "flex_attention",
                   "xformers_attention": "xformers", "sage_attention": "sage", "eager_attention": "eager"}


def read_axolotl(data: Mapping[str, Any], path: str) -> TrainingConfig:
    r = Reading(path, "axolotl", data)
    _model(r)
    method = _method(r)
    _adapter_fields(r, method)
    ds = read_deepspeed_section(r, "deepspeed")
    fsdp = read_fsdp(r, "fsdp", "fsdp_config")
    if fsdp and r.has("fsdp_version"):  # axolotl's top-level key (it also reads fsdp_config.fsdp_version)
        fsdp_version(r, "fsdp_version")
    _precision(r, method, ds is not None)
    hf_optimizer(r, "optimizer", whose="axolotl")
    _step(r)
    _recipe(r, method, ds, fsdp)
    for key, why in NOT_MODELLED.items():
        r.not_modelled(key, why)
    ignore_prefixed(r, ("wandb_", "trackio_", "mlflow_", "comet_", "hub_", "dataloader_", "loss_watchdog_",
                        "sample_packing_", "eval_"))
    return r.finish(IGNORED, containers=("fsdp_config", "gradient_checkpointing_kwargs",
                                         "model_quantization_config_kwargs"))


def _model(r: Reading) -> None:
    base = r.get("base_model")
    if not isinstance(base, str) or not base:
        raise r.error("base_model", "missing: axolotl needs the model to fine-tune")
    r.used("base_model", f"the model: {base}", model_name=base)
    if r.has("base_model_config"):
        r.not_modelled("base_model_config", "another source of the architecture: peftcalc reads base_model's; give "
                                            "--config PATH to use it")
    quant = r.get("model_quantization_config")
    if quant is None:
        return
    if r.get("load_in_4bit") is True or r.get("load_in_8bit") is True:
        raise r.error("model_quantization_config", "contradicts load_in_4bit/load_in_8bit: a base is quantized one way")
    if r.get("model_quantization_config_kwargs.dequantize") is True:
        r.used("model_quantization_config", f"{quant} checkpoint dequantized at load: trained in the model dtype")
        r.used("model_quantization_config_kwargs.dequantize", "the weights train unquantized")
    else:
        r.not_modelled("model_quantization_config", f"{quant}: a quantized base, not modelled (counted unquantized)")
    r.rest_of("model_quantization_config_kwargs")


def _method(r: Reading) -> str:
    adapter = r.get("adapter")
    four, eight = r.get("load_in_4bit") is True, r.get("load_in_8bit") is True
    dora = r.get("peft_use_dora") is True
    if four and eight:
        raise r.error("load_in_4bit", "and load_in_8bit are both true: a base is quantized one way")
    for key, on in (("load_in_4bit", four), ("load_in_8bit", eight)):
        if not on and r.lookup(key) is False:
            r.ignored(key, "false")
    if adapter is None:
        if four or eight:
            raise r.error("load_in_4bit" if four else "load_in_8bit", "quantizes the base, which axolotl allows only "
                          "with an adapter (adapter: qlora or lora)")
        r.default("adapter", "none", "full fine-tuning (no adapter)", method="full")
        return "full"
    if adapter == "qlora":
        if not four:
            raise r.error("adapter", "qlora needs load_in_4bit: true (axolotl's validate_qlora)")
        r.used("adapter", "--method qlora" + (" (peft_use_dora: DoRA over the 4-bit base, counted as QLoRA without "
                                               "the magnitude vectors)" if dora else ""), method="qlora", quant_bits="4")
        r.used("load_in_4bit", "the base in 4-bit NF4 with double quantization (axolotl's BitsAndBytesConfig)")
        r.default("bnb_4bit_quant_storage", "bfloat16", "axolotl's BitsAndBytesConfig stores the packed 4-bit codes "
                  "in bf16", quant_storage="bf16")
        return "qlora"
    if adapter != "lora":
        raise PeftcalcError(f"{r.path}: adapter: {adapter!r} is not an adapter peftcalc models (lora, qlora)")
    if eight:
        r.used("adapter", "LoRA over an 8-bit base: --method qlora --quant-bits 8", method="qlora", quant_bits="8")
        r.used("load_in_8bit", "the base in 8-bit (LLM.int8)")
        return "qlora"
    if four:
        r.warn("adapter: lora with load_in_4bit: axolotl quantizes to 4 bits only for adapter: qlora, so the base "
               "stays unquantized (and prepare_model_for_kbit_training still runs); use adapter: qlora for 4 bits")
        r.used("load_in_4bit", "no quantization with adapter: lora (axolotl), but peft's kbit preparation runs")
    method = "dora" if dora else "lora"
    r.used("adapter", f"--method {method}", method=method)
    if dora:
        r.used("peft_use_dora", "DoRA")
    return method


def _adapter_fields(r: Reading, method: str) -> None:
    keys = ("lora_r", "lora_dropout", "lora_target_modules", "lora_target_linear", "lora_modules_to_save",
            "peft_use_dora", "peft_autocast_adapter_dtype")
    if method == "full":
        for key in keys:
            r.ignored(key, "no adapter: full fine-tuning")
        return
    rank = r.get("lora_r")
    if rank is not None:
        r.used("lora_r", f"--rank {rank}", rank=int(rank))
    else:
        r.warn("lora_r is not set (axolotl requires it with an adapter): --rank stands")
    _targets(r)
    save = r.get("lora_modules_to_save")
    if save:
        names = [save] if isinstance(save, str) else [str(s) for s in save]
        r.used("lora_modules_to_save", f"--modules-to-save {','.join(names)} (full trainable copies)",
               modules_to_save=",".join(names))
    dropout = r.get("lora_dropout")
    if dropout:
        r.used("lora_dropout", f"--lora-dropout {dropout} (each adapted module keeps its dropped input)",
               lora_dropout=float(dropout))
    elif dropout is not None:
        r.ignored("lora_dropout", "0: no dropout")


def _targets(r: Reading) -> None:
    linear = r.get("lora_target_linear") is True
    modules = r.get("lora_target_modules")
    names = [modules] if isinstance(modules, str) else [str(m) for m in modules or []]
    if linear:
        r.used("lora_target_linear", "--targets all-linear (every linear but the output head)", targets="all-linear")
        if names:
            extra = [n for n in names if n in ("lm_head", "embed_tokens")]
            r.used("lora_target_modules", "joined with all-linear, which already covers them" if not extra else
                   f"joined with all-linear; {','.join(extra)} not adapted in peftcalc's count (not modelled)")
    elif names:
        r.used("lora_target_modules", f"--targets {','.join(names)}", targets=",".join(names))
    else:
        r.default("lora_target_modules", "peft's default", "peft's default targets for the architecture")
    if r.lookup("lora_target_linear") is False:
        r.ignored("lora_target_linear", "false")


def _precision(r: Reading, method: str, deepspeed: bool) -> None:
    bf16, fp16 = r.get("bf16", "auto"), r.get("fp16")
    if bf16 is True and fp16 is True:
        r.warn("bf16 and fp16 are both true: axolotl keeps bf16")
    if bf16 in (True, "auto") or r.get("bfloat16") is True:
        half = "bf16"
    elif fp16 is True or r.get("float16") is True:
        half = "fp16"
    else:
        half = None
    if deepspeed:
        recipe = f"{half}-mixed" if half else "fp32"
        why = "DeepSpeed keeps fp32 master weights and states of the half-precision model" if half else "fp32"
    elif half == "bf16":
        recipe, why = "bf16", "the model loads in bf16: weights, gradients and optimizer states in bf16"
    elif half == "fp16":
        recipe, why = "fp16-mixed", "the model loads in fp16 with fp16 autocast"
        if method == "full":
            r.warn("fp16 full fine-tuning: axolotl loads the model in fp16 with no fp32 master weights, which "
                   "transformers' GradScaler cannot unscale; counted as fp16-mixed")
    else:
        recipe, why = "fp32", "bf16: false and no fp16: fp32"
    detail = f"--precision {recipe}: {why}" + ("; adapters in fp32 (peft)" if method != "full" else "")
    if r.has("bf16"):
        r.used("bf16", detail, precision=recipe)
    else:
        r.default("bf16", "auto", detail + " (bf16: auto on a GPU with bf16)", precision=recipe)
    for key in ("fp16", "bfloat16", "float16"):
        if r.has(key):
            r.used(key, f"--precision {recipe}")
    if r.get("peft_autocast_adapter_dtype") is False and half:
        r.used("peft_autocast_adapter_dtype", f"adapters kept in {half}", adapter_dtype=half)


def _step(r: Reading) -> None:
    micro = r.get("micro_batch_size")
    if micro is not None:
        r.used("micro_batch_size", f"--batch {micro}", batch=int(micro))
    accumulation, global_batch = r.get("gradient_accumulation_steps"), r.get("batch_size")
    if accumulation is not None and global_batch is not None:
        raise r.error("batch_size", "and gradient_accumulation_steps are both set; axolotl derives one from the other")
    if accumulation is not None:
        r.used("gradient_accumulation_steps", f"--gradient-accumulation {accumulation}",
               gradient_accumulation=int(accumulation))
    elif global_batch is not None:
        steps = max(1, int(global_batch) // int(micro or 1))
        r.used("batch_size", f"--gradient-accumulation {steps} (batch_size / micro_batch_size)",
               gradient_accumulation=steps)
    seq = r.get("sequence_len")
    if seq is not None:
        r.used("sequence_len", f"--seq {seq}", seq=int(seq))
    packing = r.get("sample_packing")
    if packing is True:
        r.used("sample_packing", "packing: every row filled to sequence_len", packing=True)
    else:
        r.ignored("sample_packing", "false") if packing is False else None
        r.default("padding", "with an attention mask", "rows padded (to sequence_len with pad_to_sequence_len, else "
                  "to the batch's longest sample), with an attention mask", padded=True)
        if r.get("pad_to_sequence_len") is not True:
            r.warn("without sample_packing or pad_to_sequence_len axolotl pads each batch to its longest sample: "
                   "sequence_len is an upper bound")
    epochs, steps = r.get("num_epochs"), r.get("max_steps")
    if epochs is not None:
        r.used("num_epochs", f"--epochs {epochs}", epochs=float(epochs))
    if steps is not None and int(steps) > 0:
        r.used("max_steps", f"--steps {steps} (stops there whatever num_epochs says)", steps=int(steps))


def _recipe(r: Reading, method: str, ds: dict | None, fsdp: bool) -> None:
    gc = r.get("gradient_checkpointing")
    on = gc in (True, "offload", "offload_disk")
    if on:
        r.used("gradient_checkpointing", "--gradient-checkpointing" + (
            f" ({gc}: saved inputs in CPU memory or on disk, not modelled)" if gc is not True else ""),
            gradient_checkpointing=True)
    elif gc is not None:
        r.ignored("gradient_checkpointing", "off")
    reentrant_default = r.get("unfrozen_parameters") is None and r.get("rl") is None
    hf_checkpointing(r, on, "gradient_checkpointing_kwargs", reentrant_default,
                     "axolotl's normalize_config: use_reentrant " + str(reentrant_default))
    hf_attention(r, "attn_implementation")
    for flag, impl in ATTENTION_FLAGS.items():
        if r.get(flag) is True and not r.has("attn_implementation"):
            hf_attention(r, flag, impl)
        elif r.has(flag):
            r.ignored(flag, "attn_implementation decides" if r.get(flag) else "false")
    _loss(r)
    quantized = r.get("load_in_4bit") is True or r.get("load_in_8bit") is True
    if method != "full" and quantized:
        zero3 = (ds is not None and r.values.get("zero") == "3")
        skipped = zero3 or (fsdp and (method == "qlora" or r.get("fsdp_config.cpu_ram_efficient_loading") is True
                                      or r.get("fsdp_config.fsdp_cpu_ram_efficient_loading") is True))
        r.default("prepare_model_for_kbit_training", not skipped,
                  "skipped under FSDP-QLoRA / ZeRO-3 (axolotl loaders/model.py)" if skipped else
                  "axolotl runs peft's prepare_model_for_kbit_training on a quantized base",
                  kbit_preparation=not skipped)


def _loss(r: Reading) -> None:
    plugins = [str(p) for p in r.get("plugins") or []]
    liger = any("liger" in p.lower() for p in plugins)
    cce = any("cut_cross_entropy" in p.lower() for p in plugins) and r.get("cut_cross_entropy") is not False
    kinds = [name for name, on in (("liger_fused_linear_cross_entropy", liger and r.get(
        "liger_fused_linear_cross_entropy") is True), ("cut_cross_entropy", cce), ("chunked_cross_entropy", r.get(
            "chunked_cross_entropy") is True), ("liger_cross_entropy", liger and r.get("liger_cross_entropy") is True))
             if on]
    if len(kinds) > 1:
        raise r.error(kinds[1], f"and {kinds[0]} are two cross-entropy kernels; axolotl allows one")
    if "liger_fused_linear_cross_entropy" in kinds:
        r.used("liger_fused_linear_cross_entropy", "--loss fused (Liger's fused linear cross-entropy: no logits "
                                                   "kept)", loss="fused")
    if cce:
        r.used("plugins", "--loss fused (Cut Cross-Entropy: no logits kept)", loss="fused")
        r.ignored("cut_cross_entropy", "on with the plugin")
    if "chunked_cross_entropy" in kinds:
        r.used("chunked_cross_entropy", "--loss chunked", loss="chunked")
    r.not_modelled("chunked_cross_entropy_num_chunks", "the number of chunks: not modelled")
    if plugins and "plugins" not in r.uses:
        r.used("plugins", ", ".join(p.rsplit(".", 1)[-1] for p in plugins) + ": their kernels are listed below")
