"""torchtune recipe configs (pytorch/torchtune @bd2a0fc7: recipes/lora_finetune_single_device.py,
lora_finetune_distributed.py, full_finetune_*.py; torchtune/models/<family>/_model_builders.py and
_component_builders.py; modules/loss).

- The model is the builder `model._component_` names: `torchtune.models.llama3_1.lora_llama3_1_8b` is LoRA on
  Llama 3.1 8B, `qlora_*` the same over an NF4 base (`partial(lora_*, quantize_base=True)`), no prefix full
  fine-tuning. The builder fixes the architecture; BUILDER_MODELS maps it to the Hugging Face id the configs'
  own `tune download` lines fetch.
- `dtype: bf16` is bf16 for everything (weights, LoRA parameters, gradients, optimizer states).
- LoRA targets: lora_attn_modules (q_proj, k_proj, v_proj, output_proj = o_proj), apply_lora_to_mlp (w1, w2, w3 =
  gate_proj, down_proj, up_proj), apply_lora_to_output (the output head).
- The recipe is named only on the header's `tune run` line; a `*_distributed` recipe shards with FSDP2 (ZeRO-3)
  over `--nproc_per_node` GPUs.
- torchtune's model code is its own, not transformers': the activations are those of the transformers model of
  the same architecture (stated in the output).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig

# builder (without lora_/qlora_) -> the Hugging Face id of the architecture, from the configs' `tune download` lines
BUILDER_MODELS = {
    "llama3_1.llama3_1_8b": "meta-llama/Llama-3.1-8B", "llama3_1.llama3_1_70b": "meta-llama/Llama-3.1-70B",
    "llama3_1.llama3_1_405b": "meta-llama/Llama-3.1-405B", "llama3.llama3_8b": "meta-llama/Meta-Llama-3-8B",
    "llama3.llama3_70b": "meta-llama/Meta-Llama-3-70B", "llama3_2.llama3_2_1b": "meta-llama/Llama-3.2-1B",
    "llama3_2.llama3_2_3b": "meta-llama/Llama-3.2-3B", "llama3_3.llama3_3_70b": "meta-llama/Llama-3.3-70B-Instruct",
    "llama2.llama2_7b": "meta-llama/Llama-2-7b-hf", "llama2.llama2_13b": "meta-llama/Llama-2-13b-hf",
    "llama2.llama2_70b": "meta-llama/Llama-2-70b-hf", "mistral.mistral_7b": "mistralai/Mistral-7B-v0.1",
    "gemma.gemma_2b": "google/gemma-2b", "gemma.gemma_7b": "google/gemma-7b", "gemma2.gemma2_2b": "google/gemma-2-2b",
    "gemma2.gemma2_9b": "google/gemma-2-9b", "gemma2.gemma2_27b": "google/gemma-2-27b",
    "phi3.phi3_mini": "microsoft/Phi-3-mini-4k-instruct", "phi4.phi4_14b": "microsoft/phi-4",
    "qwen2_5.qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B", "qwen2_5.qwen2_5_1_5b_instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2_5.qwen2_5_1_5b_base": "Qwen/Qwen2.5-1.5B", "qwen2_5.qwen2_5_3b": "Qwen/Qwen2.5-3B",
    "qwen2_5.qwen2_5_7b_instruct": "Qwen/Qwen2.5-7B-Instruct", "qwen2_5.qwen2_5_7b_base": "Qwen/Qwen2.5-7B",
    "qwen2_5.qwen2_5_14b_instruct": "Qwen/Qwen2.5-14B-Instruct", "qwen2_5.qwen2_5_32b_instruct":
    "Qwen/Qwen2.5-32B-Instruct", "qwen2_5.qwen2_5_72b_instruct": "Qwen/Qwen2.5-72B-Instruct",
    "qwen3.qwen3_0_6b_instruct": "Qwen/Qwen3-0.6B", "qwen3.qwen3_1_7b_instruct": "Qwen/Qwen3-1.7B",
    "qwen3.qwen3_4b_instruct": "Qwen/Qwen3-4B", "qwen3.qwen3_8b_instruct": "Qwen/Qwen3-8B",
    "qwen3.qwen3_8b_base": "Qwen/Qwen3-8B-Base", "qwen3.qwen3_14b_instruct": "Qwen/Qwen3-14B",
    "qwen3.qwen3_32b": "Qwen/Qwen3-32B",
}
TIED_FAMILIES = ("llama3_2", "gemma", "gemma2", "qwen2_5.qwen2_5_0_5b", "qwen2_5.qwen2_5_1_5b", "qwen2_5.qwen2_5_3b",
                 "qwen3.qwen3_0_6b", "qwen3.qwen3_1_7b", "qwen3.qwen3_4b")
ATTN_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP_MODULES = ("gate_proj", "down_proj", "up_proj")  # w1, w2, w3
IGNORED = dict.fromkeys(("output_dir", "tokenizer", "checkpointer", "resume_from_checkpoint", "seed", "shuffle",
                         "lr_scheduler", "clip_grad_norm", "metric_logger", "log_every_n_steps",
                         "log_peak_memory_stats", "log_level", "profiler", "device", "run_val_every_n_steps",
                         "dataset_val", "batch_size_val", "cudnn_deterministic_mode", "low_cpu_ram",
                         "enable_async_checkpointing", "custom_sharded_layers", "recipe_checkpoint", "tensor_parallel_plan",
                         "data_parallel_shard_dim", "data_parallel_replicate_dim", "log_every_n_steps"), NO_EFFECT)
NOT_MODELLED = {
    "enable_activation_offloading": "activations kept in CPU memory: not modelled",
    "compile": "torch.compile of model and loss: speed and fusions, not modelled",
    "optimizer_in_bwd": "the optimizer steps inside backward, so the gradients are never all held: not modelled",
    "save_adapter_weights_only": "torchtune also saves the merged model each epoch unless true: peftcalc gives the "
                                 "adapter checkpoint's size",
    "save_every_n_steps": "checkpoints written during training: peftcalc gives one checkpoint's size",
    "ac_mode": "selective activation checkpointing: not modelled", "ac_option": "selective activation checkpointing",
    "context_parallel_dim": "context parallelism: not modelled",
}
RECIPE_LINE = re.compile(r"tune run\s+(?:--nnodes[ =](\d+)\s+)?(?:--nproc_per_node[ =](\d+)\s+)?(\w+)")


def read_torchtune(data: Mapping[str, Any], path: str, text: str = "") -> TrainingConfig:
    r = Reading(path, "torchtune", data)
    recipe, gpus = _recipe_line(text)
    family, method = _model(r)
    _precision(r, method)
    _optimizer(r)
    _step(r)
    _distribution(r, recipe, gpus)
    for key, why in NOT_MODELLED.items():
        r.not_modelled(key, why)
    r.rest_of("dataset", {"_component_": "the dataset: its size is given by --tokens", "split": "the share of the "
                          "dataset trained on: give --tokens for it", "source": NO_EFFECT, "data_files": NO_EFFECT,
                          "column_map": NO_EFFECT, "train_on_input": NO_EFFECT, "conversation_column": NO_EFFECT,
                          "conversation_style": NO_EFFECT, "new_system_prompt": NO_EFFECT})
    r.rest_of("loss", {"num_output_chunks": "the number of chunks: not modelled"})
    return r.finish(IGNORED, containers=("model", "optimizer", "loss", "dataset", "tokenizer"))


def _recipe_line(text: str) -> tuple[str | None, int | None]:
    m = RECIPE_LINE.search(text)
    if m is None:
        return None, None
    nodes, per_node, recipe = m.groups()
    gpus = int(per_node) * int(nodes or 1) if per_node else None
    return recipe, gpus


def _model(r: Reading) -> tuple[str, str]:
    component = r.get("model._component_")
    if not isinstance(component, str) or not component.startswith("torchtune.models."):
        raise r.error("model._component_", "names no torchtune model builder (torchtune.models.<family>.<builder>)")
    family, _, builder = component[len("torchtune.models."):].rpartition(".")
    quantized = builder.startswith("qlora_")
    base = builder.removeprefix("qlora_").removeprefix("lora_")
    lora = builder != base
    if r.has("model.quantize_base"):
        quantized = r.get("model.quantize_base") is True
        r.used("model.quantize_base", "NF4 base (torchao)" if quantized else "no quantization (overrides the builder)")
    dora = r.get("model.use_dora") is True
    key = f"{family}.{base}"
    hf_id = BUILDER_MODELS.get(key)
    method = ("qlora" if quantized else "dora" if dora else "lora") if lora else "full"
    detail = f"--method {method}" + (", its model " + hf_id if hf_id else "")
    if hf_id is None:
        r.warn(f"model._component_: {component} is not a builder peftcalc maps to a Hugging Face model; give "
               "--model or --config")
        r.used("model._component_", detail + " (model not mapped: give --model)", method=method)
    else:
        r.used("model._component_", detail, method=method, model_name=hf_id)
    if quantized and not lora:
        raise r.error("model.quantize_base", "quantizes the base of a full fine-tuning builder; torchtune quantizes "
                                             "only under LoRA")
    if lora:
        _lora(r, key, quantized, dora)
    return family, method


def _lora(r: Reading, key: str, quantized: bool, dora: bool) -> None:
    rank = r.get("model.lora_rank")
    r.used("model.lora_rank", f"--rank {rank}", rank=int(rank)) if rank is not None else \
        r.default("model.lora_rank", 8, "--rank 8 (torchtune's builder default)", rank=8)
    attn = [ATTN_MODULES.get(str(m), str(m)) for m in r.get("model.lora_attn_modules") or []]
    mlp = r.get("model.apply_lora_to_mlp") is True
    output = r.get("model.apply_lora_to_output") is True
    if output and key.startswith(TIED_FAMILIES):
        raise r.error("model.apply_lora_to_output", "the builder ties its output to the embedding, which torchtune "
                                                     "cannot adapt")
    targets = attn + (list(MLP_MODULES) if mlp else []) + (["lm_head"] if output else [])
    if not targets:
        raise r.error("model.lora_attn_modules", "adapts nothing (no attention modules, no MLP, no output)")
    r.used("model.lora_attn_modules", f"--targets {','.join(targets)} (output_proj = o_proj)", targets=",".join(targets))
    r.used("model.apply_lora_to_mlp", "w1, w2, w3 = gate_proj, down_proj, up_proj" if mlp else "off") \
        if r.has("model.apply_lora_to_mlp") else None
    r.used("model.apply_lora_to_output", "the output head" if output else "off") \
        if r.has("model.apply_lora_to_output") else None
    if dora:
        r.used("model.use_dora", "DoRA" if not quantized else "DoRA over the NF4 base: counted as QLoRA without the "
                                                               "magnitude vectors")
    r.not_modelled("model.lora_dropout", "dropout before each adapter keeps a mask per adapted input: not modelled")
    r.rest_of("model", {"lora_alpha": NO_EFFECT, "_component_": NO_EFFECT})


def _precision(r: Reading, method: str) -> None:
    dtype = r.get("dtype")
    if dtype == "fp16":
        raise r.error("dtype", "fp16: torchtune's recipes refuse it (bf16 or fp32)")
    if dtype not in ("bf16", "fp32"):
        raise r.error("dtype", f"{dtype!r}: torchtune's recipes take bf16 or fp32")
    settings: dict[str, Any] = {"precision": dtype}
    if dtype == "bf16" and method != "full":
        settings["adapter_dtype"] = "bf16"
    r.used("dtype", f"--precision {dtype}: " + ("weights, LoRA parameters, gradients and optimizer states all in bf16"
                                                if dtype == "bf16" else "everything in fp32"), **settings)


def _optimizer(r: Reading) -> None:
    component = str(r.get("optimizer._component_", ""))
    fused = r.get("optimizer.fused") is True
    choices = {"torch.optim.AdamW": ("adamw", "fused" if fused else "foreach", None),
               "torch.optim.Adam": ("adamw", "fused" if fused else "foreach", None),
               "bitsandbytes.optim.PagedAdamW8bit": ("paged-adamw-8bit", None, None),
               "bitsandbytes.optim.AdamW8bit": ("adamw-8bit", None, None),
               "torchao.optim.AdamW8bit": ("adamw-8bit", None, None),
               "bitsandbytes.optim.PagedAdamW": ("adamw", "fused", "fp32"),
               "bitsandbytes.optim.PagedAdamW32bit": ("adamw", "fused", "fp32")}
    if component in choices:
        optimizer, impl, states = choices[component]
        settings = {"optimizer": optimizer, **({"adamw_impl": impl} if impl else {}),
                    **({"optimizer_state_dtype": states} if states else {})}
        r.used("optimizer._component_", f"--optimizer {optimizer}" + (f" --adamw-impl {impl}" if impl else "") +
               (", states in fp32 (bitsandbytes 32-bit)" if states else ""), **settings)
        r.used("optimizer.fused", "fused AdamW") if r.has("optimizer.fused") else None
    elif component == "torch.optim.SGD":
        momentum = r.get("optimizer.momentum", 0)
        r.used("optimizer._component_", "--optimizer " + ("sgd-momentum" if momentum else "sgd"),
               optimizer="sgd-momentum" if momentum else "sgd")
    elif component:
        r.not_modelled("optimizer._component_", f"{component}: not an optimizer peftcalc models (--optimizer stands)")
    r.rest_of("optimizer", ("lr", "weight_decay", "betas", "eps", "momentum", "amsgrad", "foreach"))


def _step(r: Reading) -> None:
    batch = r.get("batch_size")
    if batch is not None:
        r.used("batch_size", f"--batch {batch}", batch=int(batch))
    accumulation = r.get("gradient_accumulation_steps")
    if accumulation is not None:
        r.used("gradient_accumulation_steps", f"--gradient-accumulation {accumulation}",
               gradient_accumulation=int(accumulation))
    seq, packed = r.get("tokenizer.max_seq_len"), r.get("dataset.packed") is True
    if packed and seq is None:
        raise r.error("dataset.packed", "needs tokenizer.max_seq_len (torchtune's PackedDataset)")
    if seq is not None:
        r.used("tokenizer.max_seq_len", f"--seq {seq}", seq=int(seq))
    else:
        r.ignored("tokenizer.max_seq_len", "null: no truncation, the data decides (give --seq)")
        r.warn("tokenizer.max_seq_len is null: batches are padded to their longest sample, which the data decides; "
               "give --seq")
    r.used("dataset.packed", "packing: every row filled to max_seq_len", packing=True) if packed else \
        r.ignored("dataset.packed", "false")
    r.rest_of("tokenizer", {"_component_": NO_EFFECT, "path": NO_EFFECT, "merges_file": NO_EFFECT,
                            "prompt_template": NO_EFFECT})
    ac = r.get("enable_activation_checkpointing") is True
    r.used("enable_activation_checkpointing", "--gradient-checkpointing (non-reentrant, per layer)" if ac else "off",
           gradient_checkpointing=ac, **({"reentrant_checkpointing": False} if ac else {}))
    if r.get("enable_activation_offloading") is True and not ac:
        raise r.error("enable_activation_offloading", "needs enable_activation_checkpointing (torchtune's recipes)")
    if r.get("optimizer_in_bwd") is True and int(accumulation or 1) > 1:
        raise r.error("optimizer_in_bwd", "needs gradient_accumulation_steps: 1 (torchtune's recipes)")
    loss = str(r.get("loss._component_", ""))
    if loss.endswith(("LinearCrossEntropyLoss", "CEWithChunkedOutputLoss")):
        r.used("loss._component_", "--loss chunked (the cross-entropy over chunks of tokens)", loss="chunked")
    elif loss:
        r.used("loss._component_", f"{loss.rsplit('.', 1)[-1]}: the standard loss", loss="standard")
    epochs, cap = r.get("epochs"), r.get("max_steps_per_epoch")
    if epochs is not None:
        r.used("epochs", f"--epochs {epochs}", epochs=float(epochs))
    if cap is not None:
        r.used("max_steps_per_epoch", f"--steps {int(cap) * int(epochs or 1)} (a cap: fewer if the data ends first)",
               steps=int(cap) * int(epochs or 1))


def _distribution(r: Reading, recipe: str | None, gpus: int | None) -> None:
    distributed = recipe is not None and recipe.endswith("_distributed")
    if recipe is not None:
        zero = "0"
        if distributed:
            zero = "2" if r.get("fsdp_reshard_after_forward") is False else "3"
        r.default("tune run", recipe, "the recipe named on the file's header line: " + (
            f"FSDP2, --zero {zero}" if distributed else "one GPU"), zero=zero,
            **({"sharding": "fsdp2"} if distributed else {}))
        if distributed and gpus:
            r.default("--nproc_per_node", gpus, f"--gpus {gpus} (the header's tune run line)", gpus=gpus)
        elif distributed:
            r.warn("a distributed recipe without --nproc_per_node on its header line: give --gpus N")
    elif r.has("fsdp_cpu_offload") or r.has("fsdp_reshard_after_forward"):
        r.warn("FSDP fields without the recipe's `tune run` line: the number of GPUs is unknown; give --gpus N")
    if r.get("fsdp_cpu_offload") is True:
        r.used("fsdp_cpu_offload", "parameters, gradients and the optimizer step in CPU memory (--zero 3 --offload "
                                   "--offload-params)", zero="3", offload=True, offload_params=True)
    elif r.has("fsdp_cpu_offload"):
        r.ignored("fsdp_cpu_offload", "false")
    if r.has("fsdp_reshard_after_forward"):
        r.used("fsdp_reshard_after_forward", "ZeRO-3" if r.get("fsdp_reshard_after_forward") else "ZeRO-2")
    tp = r.get("tensor_parallel_dim")
    if tp is not None and int(tp) > 1:
        r.used("tensor_parallel_dim", f"--tp {tp}", tp=int(tp))
    elif tp is not None:
        r.ignored("tensor_parallel_dim", "1: no tensor parallelism")
