"""LLaMA-Factory v1 YAML (examples/v1/: `model:` as a string, `peft_config`, `quant_config`, `dist_config`;
hiyouga/LLaMA-Factory @ff6d4d12 src/llamafactory/v1/config/{model_args,training_args,data_args}.py and
v1/plugins/model_plugins/{peft,quantization}.py).

Defaults: micro_batch_size 1, cutoff_len 2048, num_train_epochs 3, bf16 True, enable_activation_checkpointing
True, flash_attn sdpa; `dist_config: {name: fsdp2}` shards fully (ZeRO-3).
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig
from peftcalc.errors import PeftcalcError

IGNORED = dict.fromkeys(("model_class", "train_dataset", "eval_dataset", "output_dir", "learning_rate",
                         "sample_backend", "max_new_tokens", "seed", "logging_steps", "lr_scheduler_type",
                         "warmup_ratio", "weight_decay", "template"), NO_EFFECT)
NOT_MODELLED = {"kernel_config": "kernel plugins (Liger ...): not modelled", "cp_size": "context parallelism: not "
                "modelled", "batching_strategy": "dynamic or padding-free batching: counted as padded rows",
                "save_steps": "checkpoints written during training: peftcalc gives one checkpoint's size",
                "save_epochs": "checkpoints written during training: peftcalc gives one checkpoint's size",
                "save_total_limit": "checkpoints kept: peftcalc gives one checkpoint's size",
                "optim_config": "optimizer settings: not modelled (--optimizer stands)"}
DIST = {"fsdp2": "3", "fsdpturbo": "3"}


def read_v1(data: Mapping[str, Any], path: str) -> TrainingConfig:
    r = Reading(path, "llamafactory", data)
    r.used("model", f"the model: {r.get('model')}", model_name=str(r.get("model")))
    _peft(r)
    _quant(r)
    dist = r.get("dist_config.name")
    if dist in DIST:
        r.used("dist_config.name", f"{dist}: --zero {DIST[dist]}", zero=DIST[dist],
               **({"sharding": "fsdp2"} if dist == "fsdp2" else {}))
        r.warn(f"{dist} shards over the GPUs the launcher starts; the file does not say how many: give --gpus N")
    elif dist is not None:
        r.not_modelled("dist_config.name", f"{dist}: not modelled (--zero stands)")
    r.rest_of("dist_config", {"dcp_path": NO_EFFECT})
    bf16 = r.get("bf16", True)
    recipe = "bf16" if bf16 else "fp32"
    r.used("bf16", f"--precision {recipe}", precision=recipe) if r.has("bf16") else \
        r.default("bf16", True, "--precision bf16 (v1's default: bf16 weights; adapters fp32)", precision=recipe)
    micro = r.get("micro_batch_size")
    r.used("micro_batch_size", f"--batch {micro}", batch=int(micro)) if micro is not None else \
        r.default("micro_batch_size", 1, "--batch 1 (v1's default)", batch=1)
    cutoff = r.get("cutoff_len")
    r.used("cutoff_len", f"--seq {cutoff}", seq=int(cutoff)) if cutoff is not None else \
        r.default("cutoff_len", 2048, "--seq 2048 (v1's default)", seq=2048)
    if r.has("global_batch_size"):
        r.not_modelled("global_batch_size", "the global batch (accumulation = global / (GPUs x micro)): give "
                                            "--gradient-accumulation")
    ac = r.get("enable_activation_checkpointing", True)
    r.used("enable_activation_checkpointing", "--gradient-checkpointing" if ac else "off",
           gradient_checkpointing=bool(ac)) if r.has("enable_activation_checkpointing") else \
        r.default("enable_activation_checkpointing", True, "--gradient-checkpointing (v1's default)",
                  gradient_checkpointing=True)
    steps, epochs = r.get("max_steps"), r.get("num_train_epochs")
    if steps:
        r.used("max_steps", f"--steps {steps}", steps=int(steps))
    elif epochs is not None:
        r.used("num_train_epochs", f"--epochs {epochs}", epochs=float(epochs))
    for key, why in NOT_MODELLED.items():
        r.not_modelled(key, why)
    return r.finish(IGNORED, containers=("peft_config", "quant_config", "dist_config"))


def _peft(r: Reading) -> None:
    name = r.get("peft_config.name")
    if name is None:
        r.default("peft_config", "none", "--method full (no peft_config)", method="full")
        return
    if name != "lora":
        raise PeftcalcError(f"{r.path}: peft_config.name: {name} is not a method peftcalc models yet")
    r.used("peft_config.name", "--method lora", method="lora")
    rank = r.get("peft_config.r")
    if rank is not None:
        r.used("peft_config.r", f"--rank {rank}", rank=int(rank))
    target = r.get("peft_config.target_modules", "all")
    targets = "all-linear" if target == "all" else ",".join(target) if isinstance(target, list) else str(target)
    r.used("peft_config.target_modules", f"--targets {targets}", targets=targets)
    dropout = r.get("peft_config.lora_dropout")
    if dropout:
        r.used("peft_config.lora_dropout", f"--lora-dropout {dropout} (each adapted module keeps its dropped input)",
               lora_dropout=float(dropout))
    elif dropout is not None:
        r.ignored("peft_config.lora_dropout", "0: no dropout")
    r.rest_of("peft_config", {"lora_alpha": NO_EFFECT, "use_rslora": NO_EFFECT, "use_dora": NO_EFFECT})


def _quant(r: Reading) -> None:
    if r.get("quant_config") is None:
        return
    name, bits = r.get("quant_config.name", "auto"), r.get("quant_config.quantization_bit")
    if name not in ("bnb", "auto") or str(bits) not in ("4", "8"):
        raise PeftcalcError(f"{r.path}: quant_config: {name} {bits}-bit is not modelled (bitsandbytes 4 or 8 bits is)")
    r.used("quant_config.quantization_bit", f"--method qlora --quant-bits {bits}", method="qlora",
           quant_bits=str(bits))
    r.used("quant_config.name", "bitsandbytes" + (" (auto: bitsandbytes assumed)" if name == "auto" else ""))
    r.rest_of("quant_config", {"double_quantization": NO_EFFECT, "quantization_type": "nf4 and fp4 take the same "
                                                                                      "bytes"})
