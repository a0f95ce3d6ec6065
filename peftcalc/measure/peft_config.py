"""Our method objects -> the equivalent peft config, so peft can be applied to the real model.

Used by the tests that compare our counts with peft's and by the measured backend. Everything the method
chose is passed explicitly (targets, feed-forward modules, rank, virtual tokens, token width), so peft
adapts exactly what peftcalc describes instead of falling back on its own defaults.
"""

from __future__ import annotations

import re
from typing import Any

from peft import (IA3Config, LoraConfig, PeftConfig, PrefixTuningConfig, PromptEncoderConfig,
                  PromptTuningConfig, TaskType)

from peftcalc.methods.adapter import BottleneckAdapter
from peftcalc.methods.base import Adaptation
from peftcalc.methods.full import Full
from peftcalc.methods.ia3 import IA3, is_feedforward
from peftcalc.methods.lora import Lora
from peftcalc.methods.modules_to_save import ModulesToSave
from peftcalc.methods.prefix import PrefixTuning
from peftcalc.methods.prompt import PromptTuning, PTuning
from peftcalc.methods.targets import ALL_LINEAR, default_ia3_targets, default_lora_targets
from peftcalc.model.spec import ModelSpec

# The peft task type of each kind of model, as measure/hf_model.py builds it. Encoder-only models are built
# with their masked-LM head, for which peft has no task type. task_type=None works for LoRA and IA3 but not
# for the prompt methods (get_peft_model looks the task up: KeyError); FEATURE_EXTRACTION wraps any model,
# adds nothing trainable and accepts every method, so counts are the model's own. Its forward (like
# TOKEN_CLS's) does not extend `labels` over the virtual tokens of prompt/p-tuning: a caller training the
# masked-LM with labels prepends num_virtual_tokens x -100 itself.
TASK_TYPE: dict[str, TaskType] = {
    "decoder": TaskType.CAUSAL_LM,
    "encoder-decoder": TaskType.SEQ_2_SEQ_LM,
    "encoder": TaskType.FEATURE_EXTRACTION,
}


def task_type(spec: ModelSpec) -> TaskType:
    return TASK_TYPE[spec.arch.kind]


def module_regex(templates: tuple[str, ...] | list[str]) -> str:
    """A regex that peft full-matches against module names: exactly the modules of these name templates."""
    return "|".join(re.escape(t).replace(re.escape("{i}"), r"\d+") for t in templates)


def _targets(targets: tuple[str, ...]) -> list[str] | str:
    return ALL_LINEAR if targets == (ALL_LINEAR,) else list(targets)


def peft_config(method: Any, spec: ModelSpec) -> PeftConfig | None:
    """The peft config equivalent to `method` on `spec`; None for methods peft does not implement
    (full fine-tuning, bottleneck adapters).

    Pass the method object (a Lora, PromptTuning, PTuning, PrefixTuning, IA3, Full, BottleneckAdapter), not
    its Adaptation: the options (rank, projection, targets as the user named them) live on the method.
    Targets are passed as the method names them (or peft's family default the method used), so peft's own
    suffix matching selects the modules; the tests check it selects exactly `adaptation.adapted`.
    """
    if isinstance(method, Adaptation):
        raise TypeError("peft_config needs the method object (e.g. make_method(...)), not its Adaptation")
    if isinstance(method, ModulesToSave):
        cfg = peft_config(method.inner, spec)
        if cfg is not None:
            cfg.modules_to_save = list(method.modules)
        return cfg
    if isinstance(method, (Full, BottleneckAdapter)):
        return None
    task = task_type(spec)
    if isinstance(method, Lora):
        # QLoRA's quantization belongs to how the base model is loaded (BitsAndBytesConfig), not to the
        # LoRA config: the adapters are the same.
        targets = method.targets if method.targets is not None else default_lora_targets(spec)[0]
        return LoraConfig(task_type=task, r=method.rank, target_modules=_targets(targets), use_dora=method.magnitude,
                          lora_dropout=method.dropout)
    if isinstance(method, IA3):
        if method.targets is None:
            targets, ff, _ = default_ia3_targets(spec)
        else:
            targets = method.targets
            ff = method.feedforward if method.feedforward is not None else default_ia3_targets(spec)[1]
        feedforward: list[str] | str = list(ff)
        if targets == (ALL_LINEAR,) or not set(ff) <= set(targets):
            # peft insists that a list of feed-forward names be a subset of the list of target names; when it
            # is not (targets c_proj, feed-forward mlp.c_proj), name the feed-forward modules of the
            # adaptation exactly, as a regex (which peft full-matches against module names).
            adapted = set(method.adapt(spec).adapted)
            chosen = [l.name for l in spec.linears if l.name in adapted and is_feedforward(l, ff)]
            feedforward = module_regex(chosen) if chosen else []
        return IA3Config(task_type=task, target_modules=_targets(targets), feedforward_modules=feedforward)
    if isinstance(method, PromptTuning):
        # token_dim: the input embedding width, which peft would take from hidden_size (wrong for OPT-350m).
        return PromptTuningConfig(task_type=task, num_virtual_tokens=method.virtual_tokens,
                                  token_dim=spec.arch.token_dim)
    if isinstance(method, PTuning):
        return PromptEncoderConfig(task_type=task, num_virtual_tokens=method.virtual_tokens,
                                   token_dim=spec.arch.token_dim,
                                   encoder_hidden_size=method.encoder_hidden or spec.arch.token_dim)
    if isinstance(method, PrefixTuning):
        # token_dim, num_layers and num_attention_heads are left to peft: it reads them from the model's
        # config, with its grouped-query rule (num_key_value_heads x head_dim), which is what the key/value
        # cache needs. The tests check that our prefix formula agrees with what peft derives.
        kwargs: dict[str, Any] = {}
        if method.encoder_hidden is not None:
            kwargs["encoder_hidden_size"] = method.encoder_hidden
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=method.virtual_tokens,
                                  prefix_projection=method.projection, **kwargs)
    raise TypeError(f"no peft equivalent known for {type(method).__name__}")
