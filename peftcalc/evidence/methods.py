"""A published record's method and its config, as a peftcalc Method: the peft name, the rank, the target
modules in each framework's wording (peft's target_modules, litgpt's lora_query/.../lora_head flags,
torchtune's lora_attn_modules and apply_lora_to_*), the quantized base.

    >>> method_of(record, spec)              # doctest: +SKIP
    (Lora(rank=32, targets=('v_proj', 'q_proj')), ('lora_dropout 0.05: not replayed',))
"""

from __future__ import annotations

from typing import Any, Mapping

from peftcalc.errors import PeftcalcError
from peftcalc.evidence.record import PublishedRecord
from peftcalc.methods import METHODS, Method, MethodOptions, make_method
from peftcalc.methods.full import Full
from peftcalc.methods.ia3 import IA3
from peftcalc.methods.lora import Lora
from peftcalc.methods.prefix import PrefixTuning
from peftcalc.methods.prompt import PromptTuning, PTuning
from peftcalc.methods.targets import ALL_LINEAR, matches
from peftcalc.model.spec import ModelSpec
from peftcalc.quant import Quantization


class Unpredictable(Exception):
    """The record cannot be predicted yet; the message says why (shown as "not predicted: ...")."""


# peft's method names in the records -> peftcalc's (the ones peftcalc models by hand)
LORA_LIKE = ("lora", "qlora", "dora")
# litgpt's LoRA flags -> the module names of each of its layers in transformers' models (Llama-style; GPT-NeoX,
# Falcon and Phi fuse q, k and v into one linear)
LITGPT_FLAGS = {"lora_query": "q", "lora_key": "k", "lora_value": "v", "lora_projection": "o", "lora_mlp": "mlp",
                "lora_head": "head"}
NAMES = {"q": ("q_proj", "query_key_value", "c_attn", "Wqkv"), "k": ("k_proj", "query_key_value", "c_attn", "Wqkv"),
         "v": ("v_proj", "query_key_value", "c_attn", "Wqkv"), "o": ("o_proj", "dense", "out_proj", "c_proj"),
         "mlp": ("gate_proj", "up_proj", "down_proj", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2", "c_fc"),
         "head": ("lm_head", "embed_out")}
TORCHTUNE = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "output_proj": "o"}


def _rank(cfg: Mapping[str, Any]) -> int:
    for key in ("r", "lora_r", "lora_rank"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    raise Unpredictable("the LoRA rank is not stated")


def _existing(spec: ModelSpec, names: tuple[str, ...]) -> tuple[str, ...]:
    """The names that match a linear of the model (peft skips the others as long as one matches)."""
    kept = tuple(dict.fromkeys(n for n in names if any(matches(l, n) for l in spec.linears)))
    if not kept:
        raise Unpredictable(f"none of the target modules {', '.join(names)} exists in {spec.name}")
    return kept


def _from_flags(spec: ModelSpec, parts: list[str]) -> tuple[str, ...]:
    return _existing(spec, tuple(n for p in parts for n in NAMES[p]))


def targets_of(r: PublishedRecord, spec: ModelSpec) -> tuple[str, ...] | None:
    """The target modules in transformers' names; None for peft's default of the family."""
    cfg = r.method_config
    given = cfg.get("target_modules", cfg.get("lora_target_modules", cfg.get("lora_target")))
    if given is not None:
        if isinstance(given, list) and all(isinstance(x, str) for x in given):
            return _existing(spec, tuple(given))
        if isinstance(given, str) and given.strip() in ("all-linear", "all"):
            return (ALL_LINEAR,)
        if isinstance(given, str) and given.replace("_", "").replace(" ", "").replace(",", "").isalnum():
            return _existing(spec, tuple(t for t in given.replace(",", " ").split() if t))
        raise Unpredictable(f"target modules given as {given!r}, not as module names")
    flags = [p for key, p in LITGPT_FLAGS.items() if cfg.get(key) is True]
    if flags:
        return _from_flags(spec, flags)
    if "lora_attn_modules" in cfg:
        parts = [TORCHTUNE[m] for m in cfg["lora_attn_modules"] if m in TORCHTUNE]
        parts += ["mlp"] * bool(cfg.get("apply_lora_to_mlp")) + ["head"] * bool(cfg.get("apply_lora_to_output"))
        return _from_flags(spec, parts)
    if r.framework in ("litgpt", "torchtune"):
        raise Unpredictable("the LoRA targets are not stated")
    return None


def quantization_of(r: PublishedRecord) -> Quantization | None:
    """The bitsandbytes base the record ran (torchao's NF4 stored as bitsandbytes' is, to the byte of its codes),
    or None for a dense base. A double quantization the source does not state is taken as the QLoRA recipe's (on)."""
    q = r.quantization
    if q is None:
        return None
    if q.library == "auto_gptq":
        raise Unpredictable("GPTQ base (auto_gptq) not modelled")
    if q.library in ("bitsandbytes", "torchao") and (q.quant_type in ("nf4", "fp4") or (q.quant_type is None
                                                                                        and q.bits == 4)):
        kind = q.quant_type if q.quant_type in ("nf4", "fp4") else "nf4"
        return Quantization(4, kind, True if q.double_quant is None else q.double_quant)  # type: ignore[arg-type]
    if q.library == "bitsandbytes" and q.bits == 8:
        return Quantization(8)
    raise Unpredictable(f"{q.library} {q.quant_type or q.bits} quantization not modelled")


def _unmodelled_config(r: PublishedRecord) -> None:
    cfg = r.method_config
    for key in ("modules_to_save", "trainable_token_indices", "layers_to_transform", "rank_pattern"):
        if cfg.get(key) not in (None, {}, [], "<omitted: per-module boolean masks, see source file>"):
            raise Unpredictable(f"{key} not modelled yet")


def method_of(r: PublishedRecord, spec: ModelSpec) -> tuple[Method, tuple[str, ...]]:
    """The peftcalc Method the record ran, and notes on what of its config is not replayed."""
    _unmodelled_config(r)
    name, cfg, notes = r.method, r.method_config, []
    quantization = quantization_of(r)
    if quantization is not None and name not in ("lora", "qlora"):
        raise Unpredictable(f"{name} on a quantized base not modelled")
    dropout = cfg.get("lora_dropout")
    dropout = float(dropout) if isinstance(dropout, (int, float)) and not isinstance(dropout, bool) else 0.0
    if name in LORA_LIKE:
        targets = targets_of(r, spec)
        dora = name == "dora" or cfg.get("use_dora") is True
        if dora and dropout:
            notes.append(f"lora_dropout {dropout} with DoRA: not replayed (peft recomputes the base layer)")
        return Lora(_rank(cfg), targets, magnitude=dora, quantization=quantization, dropout=dropout), tuple(notes)
    return _other(name, cfg, spec), tuple(notes)


def _other(name: str, cfg: Mapping[str, Any], spec: ModelSpec) -> Method:
    n = cfg.get("num_virtual_tokens")
    if name == "full":
        return Full()
    if name == "ia3":
        ff = cfg.get("feedforward_modules")
        t = cfg.get("target_modules")
        return IA3(tuple(t) if isinstance(t, list) else None, tuple(ff) if isinstance(ff, list) else None)
    if name in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        if not isinstance(n, int):
            raise Unpredictable("num_virtual_tokens is not stated")
        hidden = cfg.get("encoder_hidden_size") if isinstance(cfg.get("encoder_hidden_size"), int) else None
        if name == "prompt_tuning":
            return PromptTuning(n)
        if name == "prefix_tuning":
            return PrefixTuning(n, bool(cfg.get("prefix_projection")), hidden)
        return PTuning(n, hidden)
    if name in METHODS:  # a method other engineers added by peft's name
        try:
            return make_method(name, MethodOptions(rank=_rank(cfg)) if "r" in cfg else MethodOptions())
        except PeftcalcError as e:
            raise Unpredictable(f"{name}: {e}") from None
    raise Unpredictable(f"method {name} is not in peftcalc yet")
