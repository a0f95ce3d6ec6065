"""peft's adapter_config.json (huggingface/peft 0.21: src/peft/config.py, tuners/<type>/config.py), and the
training parameters of peft's own MetaMathQA benchmark (method_comparison/MetaMathQA/utils.py,
default_training_params.json).

An adapter config records the method and its size only: the base model (often null: then --model), the rank,
the targets, modules_to_save. Batch, sequence, precision and optimizer come from flags, or from the benchmark's
training parameters given as a second --from file. peft's defaults: LoRA r 8, targets the architecture's
default (q_proj, v_proj for Llama), adapters in fp32 (autocast_adapter_dtype).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.configs.hf import DTYPES, attention_of
from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig
from peftcalc.errors import PeftcalcError

COMMON_IGNORED = dict.fromkeys((
    "revision", "inference_mode", "auto_mapping", "peft_version", "task_type", "lora_alpha", "alpha",
    "alpha_pattern", "init_lora_weights", "init_ia3_weights", "use_rslora", "megatron_config", "megatron_core",
    "fan_in_fan_out", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs",
    "projection_prng_key", "d_initial", "beta1", "beta2", "orth_reg_weight", "tinit", "tfinal", "deltaT",
    "total_step", "eps", "coft", "eva_config", "corda_config", "loftq_config", "use_qalora", "qalora_group_size",
    "layers_pattern", "exclude_modules", "lora_bias", "bias", "rank_pattern", "layer_replication",
    "target_parameters", "trainable_token_indices", "ensure_weight_tying", "arrow_config", "alora_invocation_tokens",
    "lora_dropout", "num_attention_heads", "num_transformer_submodules", "encoder_dropout", "rank_dropout",
    "module_dropout", "use_effective_conv2d", "decompose_both", "decompose_factor", "rank_dropout_scale",
    "feedforward_modules", "use_cayley_neumann", "num_cayley_neumann_terms", "block_share", "oft_block_size",
    "boft_block_size", "boft_block_num", "boft_n_butterfly_factor", "save_projection", "init_r", "target_r",
    "r", "token_dim", "num_layers", "encoder_hidden_size", "encoder_num_layers", "layers_to_transform",
    "encoder_reparameterization_type", "modules_to_save"), NO_EFFECT)
LORA_NOT_MODELLED = {
    "layers_to_transform": "adapting a subset of layers: not modelled (every layer counted)",
    "rank_pattern": "per-module ranks: not modelled (r everywhere)",
    "exclude_modules": "modules excluded from the targets: not modelled",
    "layer_replication": "replicated layers: not modelled", "target_parameters": "LoRA on parameter tensors: not "
    "modelled", "trainable_token_indices": "a few trainable embedding rows: not modelled",
    "use_qalora": "QA-LoRA: not modelled", "loftq_config": "a LoftQ-quantized base: not modelled",
    "bias": "trainable biases: not modelled", "lora_bias": "a bias on lora_B: not modelled",
    "lora_dropout": "dropout before each adapter keeps a mask per adapted input: not modelled",
}
MMQA_IGNORED = dict.fromkeys(("batch_size_eval", "eval_steps", "grad_norm_clip", "optimizer_kwargs", "lr_scheduler",
                              "generation_kwargs", "query_template", "seed"), NO_EFFECT)


def read_peft(data: Mapping[str, Any], path: str) -> TrainingConfig:
    if "peft_type" not in data:
        return _training_params(data, path)
    r = Reading(path, "peft", data)
    base = r.get("base_model_name_or_path")
    if base:
        r.used("base_model_name_or_path", f"the model: {base}", model_name=str(base))
    else:
        r.ignored("base_model_name_or_path", "null: the model comes from --model or --config")
    kind = str(r.get("peft_type")).upper()
    reader = {"LORA": _lora, "IA3": _ia3, "PROMPT_TUNING": _prompt, "P_TUNING": _prompt,
              "PREFIX_TUNING": _prompt}.get(kind)
    if reader is None:
        raise PeftcalcError(f"{path}: peft_type: {kind} is not a method peftcalc models yet (it models LORA, IA3, "
                            "PROMPT_TUNING, PREFIX_TUNING and P_TUNING)")
    reader(r, kind)
    save = r.get("modules_to_save")
    if save:
        names = ",".join(save) if isinstance(save, list) else str(save)
        r.used("modules_to_save", f"--modules-to-save {names} (full trainable copies)", modules_to_save=names)
    task = r.get("task_type")
    if task not in (None, "CAUSAL_LM", "SEQ_2_SEQ_LM"):
        r.warn(f"task_type {task}: peft adds the classification head to modules_to_save; peftcalc estimates the "
               "language-model head")
    return r.finish(COMMON_IGNORED)


def _lora(r: Reading, kind: str) -> None:
    dora = r.get("use_dora") is True
    method = "dora" if dora else "lora"
    r.used("peft_type", f"--method {method}", method=method)
    if r.has("use_dora"):
        r.used("use_dora", "DoRA" if dora else "off")
    rank = r.get("r", 8)
    r.used("r", f"--rank {rank}", rank=int(rank)) if r.has("r") else \
        r.default("r", 8, "--rank 8 (peft's default)", rank=8)
    _targets(r)
    if r.get("bias") == "none":
        r.ignored("bias", "none: no trainable biases")
    for key, why in LORA_NOT_MODELLED.items():
        r.not_modelled(key, why)


def _targets(r: Reading) -> None:
    targets = r.get("target_modules")
    if targets is None:
        r.ignored("target_modules", "null: peft's default for the architecture")
    elif isinstance(targets, str):
        if targets == "all-linear":
            r.used("target_modules", "--targets all-linear", targets="all-linear")
        else:
            raise r.error("target_modules", f"{targets!r} is a regular expression, which peftcalc does not match; "
                                            "give --targets with module names")
    else:
        names = ",".join(sorted(str(t) for t in targets))
        r.used("target_modules", f"--targets {names}", targets=names)


def _ia3(r: Reading, kind: str) -> None:
    r.used("peft_type", "--method ia3", method="ia3")
    _targets(r)
    feedforward = r.get("feedforward_modules")
    if feedforward is not None:
        r.not_modelled("feedforward_modules", "which targets scale their input: peftcalc uses peft's table")


def _prompt(r: Reading, kind: str) -> None:
    method = {"PROMPT_TUNING": "prompt", "P_TUNING": "ptuning", "PREFIX_TUNING": "prefix"}[kind]
    r.used("peft_type", f"--method {method}", method=method)
    tokens = r.get("num_virtual_tokens")
    if tokens is None:
        raise r.error("num_virtual_tokens", "missing: peft requires it for prompt learning")
    r.used("num_virtual_tokens", f"--virtual-tokens {tokens}", virtual_tokens=int(tokens))
    if kind == "PREFIX_TUNING":
        projection = r.get("prefix_projection") is True
        r.used("prefix_projection", "with the reparameterization MLP" if projection else "no projection",
               prefix_projection=projection)
    if kind == "P_TUNING" and str(r.get("encoder_reparameterization_type", "MLP")).upper() != "MLP":
        raise PeftcalcError(f"{r.path}: encoder_reparameterization_type: {r.get('encoder_reparameterization_type')} "
                            "is not modelled (peftcalc's p-tuning is the MLP encoder)")
    for key, attribute in (("token_dim", "token_dim"), ("num_layers", "num_layers")):
        if isinstance(r.get(key), int):
            r.used(key, "checked against the model's shape")
            r.expects.append((key, attribute, r.get(key)))


def _training_params(data: Mapping[str, Any], path: str) -> TrainingConfig:
    """peft's MetaMathQA benchmark: `training_params.json` (a full default, or an experiment's overrides)."""
    r = Reading(path, "peft", data)
    if r.has("model_id"):
        r.used("model_id", f"the model: {r.get('model_id')}", model_name=str(r.get("model_id")))
    dtype, amp = r.get("dtype"), r.get("use_amp") is True
    if dtype is not None:
        _benchmark_dtype(r, dtype, amp)
    for key, flag, name in (("max_seq_length", "seq", "--seq"), ("batch_size", "batch", "--batch"),
                            ("max_steps", "steps", "--steps")):
        if r.has(key):
            r.used(key, f"{name} {r.get(key)}", **{flag: int(r.get(key))})
    if r.has("use_gc"):
        r.used("use_gc", "--gradient-checkpointing" if r.get("use_gc") else "off",
               gradient_checkpointing=bool(r.get("use_gc")))
    optimizer = r.get("optimizer_type")
    if optimizer is not None:
        if str(optimizer) in ("AdamW", "Adam"):
            r.used("optimizer_type", "--optimizer adamw (torch's, foreach on CUDA)", optimizer="adamw",
                   adamw_impl="foreach")
        else:
            r.not_modelled("optimizer_type", f"{optimizer}: not an optimizer peftcalc models")
    if r.get("attn_implementation"):
        kernel, note = attention_of(r.get("attn_implementation"))
        r.used("attn_implementation", f"--attention {kernel}" + (f" ({note})" if note else ""), attention=kernel)
    r.not_modelled("compile", "torch.compile: not modelled")
    if r.get("autocast_adapter_dtype") is False:
        r.used("autocast_adapter_dtype", "adapters in the model dtype", adapter_dtype=DTYPES.get(str(dtype), "bf16"))
    elif r.has("autocast_adapter_dtype"):
        r.used("autocast_adapter_dtype", "adapters in fp32 (peft's default)")
    if set(data) == {"optimizer_kwargs"}:
        r.warn("an experiment's training_params.json only overrides default_training_params.json: give that "
               "file too (--from default_training_params.json --from this)")
    return r.finish(MMQA_IGNORED)


def _benchmark_dtype(r: Reading, dtype: Any, amp: bool) -> None:
    """The benchmark loads the model in `dtype` (int4: BitsAndBytesConfig(load_in_4bit=True), i.e. transformers'
    defaults: fp4 without double quantization, fp32 compute; int8: load_in_8bit) and trains with autocast if
    use_amp."""
    name = str(dtype)
    if name in ("int4", "int8"):
        bits = name[-1]
        extra = {"quant_type": "fp4", "double_quant": False} if bits == "4" else {}
        r.used("dtype", f"--method qlora --quant-bits {bits} (BitsAndBytesConfig's defaults: fp4 without double "
                        "quantization, fp32 compute)", method="qlora", quant_bits=bits, precision="fp32", **extra)
        return
    weights = DTYPES.get(name)
    if weights not in ("fp32", "bf16", "fp16"):
        raise r.error("dtype", f"{dtype!r}: the benchmark takes float32, bfloat16, float16, int8 or int4")
    recipe = {"fp32": "amp-bf16" if amp else "fp32", "bf16": "bf16", "fp16": "fp16-mixed"}[weights]
    r.used("dtype", f"--precision {recipe}: weights in {weights}" + (", autocast" if amp else ""), precision=recipe)
    if r.has("use_amp"):
        r.used("use_amp", "autocast" if amp else "no autocast")
