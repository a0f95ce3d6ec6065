"""A peft method applied for real to the model built on the meta device, read back as plain data (the JSON that
peftcalc/methods/peft_derived.py turns into an Adaptation): every tensor the method adds with its shape, dtype rule,
trainability and layers; what get_peft_model_state_dict saves; the buffers it adds; the modules it adapted.

The model is built in bf16, so a tensor peft keeps in fp32 (its adapter weights, autocast_adapter_dtype) shows as
fp32 and one that follows the model as bf16 (rule "model"). peft creates its tensors under the meta device; a
method whose construction reads values (BOFT's permutations, UniLoRA's bincount, CPT) is built again with peft
creating them on the CPU and moving them to the model's device, as it does for any model.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import peft
import torch
from peft import PeftType, get_peft_model, get_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftcalc.errors import PeftcalcError
from peftcalc.measure.derive import DTYPE_NAMES, template
from peftcalc.measure.hf_model import build_model
from peftcalc.methods.base import base_tensors
from peftcalc.methods.peft_catalogue import ADAPTATION_FORMAT, PeftRequest
from peftcalc.methods.targets import fallback_targets, peft_model_type
from peftcalc.model.inventory import format_layers
from peftcalc.model.spec import ModelSpec

BUILD_DTYPE = torch.bfloat16
PEFT_PREFIX = "base_model.model."
# Fields peftcalc sets itself: the task, the type, and the targets and rank through --targets and --rank.
RESERVED = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode"}
# Prompt-learning methods whose virtual tokens are keys/values in every layer (like prefix tuning).
PREFIX_LIKE = {"cartridge"}


def config_class(name: str) -> Any:
    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name.upper()]]
    except KeyError:
        raise PeftcalcError(f"peft {peft.__version__} has no method {name!r}") from None


def parse_value(text: str) -> Any:
    """A --peft-option value: JSON when it parses (8, 0.1, true, [1, 2], "text"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def config_kwargs(method: PeftRequest, cls: Any, spec: ModelSpec) -> tuple[dict[str, Any], list[str]]:
    """The peft config fields for `method`, validated against the config class; and notes on what was chosen."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    given = {k for k, _ in method.options}
    missing = [k for k in method.info.required if k not in given]
    if missing:
        raise PeftcalcError(f"--method {method.peft_type} {method.info.note}; missing: "
                            + ", ".join(f"--peft-option {k}=..." for k in missing))
    for key, value in method.options:
        if key not in fields or key in RESERVED:
            valid = ", ".join(sorted(k for k in fields if k not in RESERVED))
            raise PeftcalcError(f"--peft-option {key}: {cls.__name__} has no such field; its fields: {valid}")
        kwargs[key] = parse_value(value)
    if method.rank is not None:
        if "r" not in fields:
            raise PeftcalcError(f"--rank: {method.peft_type} has no rank (`r`); its size options are --peft-option "
                                f"fields of {cls.__name__}")
        kwargs["r"] = method.rank
    if method.info.prompt and "num_virtual_tokens" not in kwargs:
        kwargs["num_virtual_tokens"] = method.virtual_tokens
    if method.targets is not None:
        if "target_modules" not in fields:
            raise PeftcalcError(f"--targets: {method.peft_type} does not select modules (no target_modules)")
        kwargs["target_modules"] = "all-linear" if method.targets == ("all-linear",) else list(method.targets)
    return kwargs, notes


def fallback(name: str, spec: ModelSpec) -> tuple[dict[str, Any], str]:
    """Targets for a model type peft has no default for (peft raises without them): the attention's query and
    value projections found in the model (LN tuning: its norm modules), with the note that says so."""
    mt = peft_model_type(spec)
    if name == "ln_tuning":
        norms = sorted({p.name.rsplit(".", 2)[-2] for p in spec.others if p.kind == "norm" and "." in p.name})
        chosen: tuple[str, ...] | None = tuple(norms) or None
    else:
        chosen = fallback_targets(spec)
    if chosen is None:
        raise PeftcalcError(f"peft has no default {name} target modules for {mt} and peftcalc found none to choose; "
                            "pass --targets")
    kwargs: dict[str, Any] = {"target_modules": list(chosen)}
    return kwargs, (f"peft has no default {name} target modules for {mt}; peftcalc chose "
                    f"{','.join(chosen)} found in the model (--targets to choose)")


def _apply(model_fn: Any, cfg: Any) -> nn.Module:
    """get_peft_model with peft's tensors created under the meta device; a method whose construction reads values
    is built again with peft creating its tensors on the CPU (then moved to the model's meta device)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return get_peft_model(model_fn(), cfg)
        except (RuntimeError, NotImplementedError) as e:
            if "meta" not in str(e).lower():
                raise
        return get_peft_model(model_fn(), cfg)


def build_peft(method: PeftRequest, spec: ModelSpec) -> tuple[tuple[dict[int, str], set[int]], nn.Module, Any, list[str]]:
    """((the base model's parameter ids -> names, its buffer ids), the peft model, the peft config, notes), built on
    the meta device."""
    cls = config_class(method.peft_type)
    kwargs, notes = config_kwargs(method, cls, spec)
    holder: dict[str, Any] = {}

    def fresh() -> nn.Module:
        base = build_model(spec, "meta", dtype=BUILD_DTYPE)
        holder["params"] = {id(p): n for n, p in base.named_parameters(remove_duplicate=False)}
        holder["buffers"] = {id(b) for _, b in base.named_buffers(remove_duplicate=False)}
        return base

    def make(kw: dict[str, Any]) -> Any:
        try:
            cfg = cls(task_type="CAUSAL_LM" if spec.arch.kind == "decoder" else "SEQ_2_SEQ_LM"
                      if spec.arch.kind == "encoder-decoder" else "FEATURE_EXTRACTION", **kw)
        except (ValueError, TypeError) as e:
            raise PeftcalcError(f"{cls.__name__}: {str(e).splitlines()[0]}") from None
        if method.peft_type == "shira" and cfg.mask_type == "random":
            cfg.mask_fn = _cpu_random_mask(cfg.random_seed)
        return cfg

    cfg = make(kwargs)
    try:
        model = _apply(fresh, cfg)
    except ValueError as e:
        if "target_modules" not in str(e) or "target_modules" in kwargs:
            raise PeftcalcError(f"peft cannot apply {method.peft_type} to {spec.name}: {str(e).splitlines()[0]}") from None
        extra, note = fallback(method.peft_type, spec)
        cfg = make({**kwargs, **extra})
        notes.append(note)
        try:
            model = _apply(fresh, cfg)
        except ValueError as e2:
            raise PeftcalcError(f"peft cannot apply {method.peft_type} to {spec.name}: {str(e2).splitlines()[0]}") from None
    return (holder["params"], holder["buffers"]), model, cfg, notes


def _cpu_random_mask(seed: Any) -> Any:
    """SHiRA's random mask (peft.tuners.shira.mask_functions.random_mask) drawn on the CPU: peft draws it on the
    weight's device, where a meta tensor cannot count its nonzeros. Same count, r(m+n) ones per module."""
    from peft.tuners.shira.mask_functions import random_mask

    def mask_fn(base_layer: nn.Module, r: int, **kw: Any) -> torch.Tensor:
        w = base_layer.weight
        standin = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=False, device="cpu", dtype=w.dtype)
        return random_mask(standin, r, random_seed=seed)

    return mask_fn


def _rule(dtype: torch.dtype) -> str:
    """A tensor built beside a bf16 model: fp32 (peft keeps it so whatever the model), or the model's dtype."""
    return "model" if dtype == BUILD_DTYPE else DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _strip(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def _templated(rows: list[tuple[str, tuple[int, ...], str, bool]]) -> list[dict[str, Any]]:
    """(name, shape, dtype rule, trainable) rows -> entries grouped by name template, with their layer sets."""
    groups: dict[tuple, list[int]] = {}
    for name, shape, rule, trainable in rows:
        tpl, idx = template(name)
        groups.setdefault((tpl, shape, rule, trainable), [])
        if idx is not None:
            groups[(tpl, shape, rule, trainable)].append(idx)
    out = []
    for (tpl, shape, rule, trainable), idx in groups.items():
        e: dict[str, Any] = {"name": tpl, "shape": list(shape), "trainable": trainable}
        if rule:
            e["dtype"] = rule
        if "{i}" in tpl:
            e["layers"] = format_layers(sorted(idx))
        out.append(e)
    return out


def _base_trainable(spec: ModelSpec, names: list[str]) -> list[str]:
    """Base tensors peft made trainable, as the spec's group names (templates)."""
    groups = {n: g.name for g in base_tensors(spec, False) for n in g.names()}
    missing = [n for n in names if n not in groups]
    if missing:
        raise PeftcalcError(f"peft trains base tensors peftcalc's inventory of {spec.name} does not name: "
                            f"{', '.join(missing[:3])}")
    return sorted({groups[n] for n in names})


def saved_state(model: nn.Module, cfg: Any) -> dict[str, torch.Tensor]:
    """get_peft_model_state_dict. A prompt-learning method saves the prompt its encoder computes, which peft copies
    to the CPU: its encoder (small) and prompt token ids are given uninitialised CPU storage first, which leaves every
    shape and dtype as they were."""
    if cfg.is_prompt_learning:
        model.prompt_encoder.to_empty(device="cpu")
        model.prompt_tokens = {k: torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape)
                               for k, v in model.prompt_tokens.items()}
    return get_peft_model_state_dict(model)


def derive_adaptation(method: PeftRequest, spec: ModelSpec, model_key: str) -> dict[str, Any]:
    """The derived adaptation (JSON, ADAPTATION_FORMAT) of `method` on `spec` (`model_key` names the model)."""
    (base_params, base_buffers), model, cfg, notes = build_peft(method, spec)
    added, made_trainable = [], []
    for name, p in model.named_parameters():
        if id(p) in base_params:
            if p.requires_grad:
                made_trainable.append(base_params[id(p)])
            continue
        added.append((_strip(name), tuple(p.shape), _rule(p.dtype), p.requires_grad))
    buffers = [(_strip(n), tuple(b.shape), _rule(b.dtype), False) for n, b in model.named_buffers()
               if id(b) not in base_buffers]
    saved = [(k, tuple(v.shape), _rule(v.dtype), True) for k, v in saved_state(model, cfg).items()]
    adapted = sorted({template(_strip(n))[0] for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)})
    trainable, total = model.get_nb_trainable_parameters()
    virtual = int(getattr(cfg, "num_virtual_tokens", 0) or 0) if cfg.is_prompt_learning else 0
    return {
        "format": ADAPTATION_FORMAT, "peft_type": method.peft_type, "peft_version": peft.__version__,
        "request": method.key_data(model_key),
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
        "added": _templated(added), "base_trainable": _base_trainable(spec, made_trainable),
        "buffers": _templated(buffers), "saved": _templated(saved), "adapted": adapted,
        "extra_tokens": 0 if method.peft_type in PREFIX_LIKE else virtual,
        "prefix_tokens": virtual if method.peft_type in PREFIX_LIKE else 0,
        "notes": notes + ([method.info.note] if method.info.note and not method.info.required else []),
        "peft_counts": [trainable, total],
    }


def peft_config_of(method: PeftRequest, spec: ModelSpec) -> Any:
    """The peft config a derived adaptation was read with, to apply it to a real or traced model: the same fields,
    and the targets peftcalc chose where peft has no default for the model type (said in the adaptation's notes)."""
    cls = config_class(method.peft_type)
    kwargs, _ = config_kwargs(method, cls, spec)
    adaptation = method.adapt(spec)  # type: ignore[attr-defined]  # (a PeftMethod: cached after the first time)
    if "target_modules" not in kwargs and any("peftcalc chose" in n for n in adaptation.notes):
        kwargs.update(fallback(method.peft_type, spec)[0])
    task = {"decoder": "CAUSAL_LM", "encoder-decoder": "SEQ_2_SEQ_LM"}.get(spec.arch.kind, "FEATURE_EXTRACTION")
    cfg = cls(task_type=task, **kwargs)
    if method.peft_type == "shira" and cfg.mask_type == "random":
        cfg.mask_fn = _cpu_random_mask(cfg.random_seed)
    return cfg
