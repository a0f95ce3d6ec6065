"""Pieces several readers share: the optimizer, attention and gradient-checkpointing fields every Hugging Face
Trainer-based framework writes the same way, and fields ignored by prefix (loggers)."""

from __future__ import annotations

from typing import Any

from peftcalc.configs.hf import HF_DEFAULT_OPTIM, attention_of, optimizer_choice
from peftcalc.configs.reading import NO_EFFECT, Reading

LOGGER_PREFIXES = ("wandb_", "trackio_", "mlflow_", "comet_", "swanlab_", "hub_", "dataloader_", "logging_",
                   "loss_watchdog_", "push_to_hub", "report_to", "eval_", "per_device_eval")


def ignore_prefixed(r: Reading, prefixes: tuple[str, ...] = LOGGER_PREFIXES) -> None:
    for key in r.data:
        if key.startswith(prefixes) and key not in r.uses:
            r.ignored(key, "evaluation or logging only" if key.startswith(("eval_", "per_device_eval")) else NO_EFFECT)


def hf_optimizer(r: Reading, key: str, default: str = HF_DEFAULT_OPTIM, whose: str = "transformers") -> None:
    """An `optim`-style optimizer name (transformers' OptimizerNames, reused by axolotl and LLaMA-Factory)."""
    name = r.get(key)
    choice = optimizer_choice(name if name is not None else default)
    if choice.optimizer is None:
        if name is not None:
            r.not_modelled(key, choice.note + "; the estimate uses --optimizer (default adamw)")
        return
    settings: dict[str, Any] = {"optimizer": choice.optimizer}
    if choice.adamw_impl:
        settings["adamw_impl"] = choice.adamw_impl
    if choice.state_dtype:
        settings["optimizer_state_dtype"] = choice.state_dtype
    detail = f"--optimizer {choice.optimizer}" + (f" --adamw-impl {choice.adamw_impl}" if choice.adamw_impl else "") \
        + (f", states in {choice.state_dtype}" if choice.state_dtype else "") + (f" ({choice.note})" if choice.note else "")
    if name is None:
        r.default(key, default, f"{whose}'s default: {detail}", **settings)
    else:
        r.used(key, detail, **settings)


def hf_attention(r: Reading, key: str, value: Any | None = None) -> None:
    value = r.get(key) if value is None else value
    if value is None:
        return
    kernel, note = attention_of(value)
    r.used(key, f"--attention {kernel}" + (f" ({note})" if note else ""), attention=kernel)


def hf_checkpointing(r: Reading, on: bool, kwargs_key: str, default_reentrant: bool, why_default: str) -> None:
    """`use_reentrant` of `gradient_checkpointing_kwargs` (only meaningful with checkpointing on)."""
    reentrant = r.get(f"{kwargs_key}.use_reentrant")
    if not on:
        r.ignored(kwargs_key, "gradient checkpointing is off") if r.has(kwargs_key) else None
        return
    if reentrant is None:
        r.default(f"{kwargs_key}.use_reentrant", default_reentrant, why_default,
                  reentrant_checkpointing=default_reentrant)
    else:
        r.used(f"{kwargs_key}.use_reentrant", "reentrant checkpointing (torch.utils.checkpoint use_reentrant=True)"
               if reentrant else "non-reentrant checkpointing", reentrant_checkpointing=bool(reentrant))
    r.not_modelled(f"{kwargs_key}.offload", "saved inputs of checkpointed layers kept in CPU memory: not modelled")
    r.not_modelled(f"{kwargs_key}.every_n_layers", "checkpointing every n-th layer only: not modelled (every layer "
                                                   "assumed)")
    r.rest_of(kwargs_key, {"preserve_rng_state": NO_EFFECT, "determinism_check": NO_EFFECT, "debug": NO_EFFECT})
