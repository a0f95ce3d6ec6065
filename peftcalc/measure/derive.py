"""Derived inventories: build a config's model with transformers on the meta device and read its exact weight
inventory off it, as plain data (the JSON of peftcalc/model/inventory.py) the analytic layer loads without torch.

What is read, and from where:

- parameters and buffers: `named_parameters()` / `named_buffers()` of the built model (tied weights once:
  torch names a shared tensor once, and a linear whose weight was named before is marked `tied`);
- layer templates: a name's first numeric component is its layer index (`model.layers.7.mlp` ->
  `model.layers.{i}.mlp`); tensors of the same template, shape and dtype rule form one entry with the set of
  layers where they exist, so hybrid stacks stay exact;
- dtypes: the model is built in bf16; a tensor built in another dtype keeps it (fp32 rotary frequencies, int64
  ids), and the model's keep-in-fp32 plan (`PreTrainedModel._get_dtype_plan`, the one `from_pretrained`
  applies while loading) marks parameters and persistent buffers that load in fp32;
- architecture numbers: the config as transformers fills it (`AutoConfig`: class defaults for missing keys).

Multimodal checkpoints are built text-only by default (the text config's causal LM: the language model and its
head), or whole with scope "full". `python -m peftcalc.measure.inventories` regenerates the inventories shipped for
the catalogue (peftcalc/model/inventories/); `python -m peftcalc.measure.derive CONFIG.json` prints one.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from typing import Any, Mapping

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMaskedLM, \
    AutoModelForSeq2SeqLM, PretrainedConfig
from transformers.core_model_loading import build_glob_alternation
from transformers.models.auto import modeling_auto
from transformers.pytorch_utils import Conv1D

from peftcalc.errors import ConfigError
from peftcalc.model.inventory import INVENTORY_FORMAT, config_sha256, format_layers, inventory_text, parse_layers
from peftcalc.model.spec import FP32_UNDER_FP16, Scope

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "int64",
               torch.int32: "int32", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
               torch.float64: "fp64", torch.complex64: "complex64"}
BUILD_DTYPE = torch.bfloat16  # built in bf16: what follows the model dtype shows as bf16, what does not keeps its own
# Keys of a config.json that describe the files, not the model; quantization is how weights ship, not how
# fine-tuning holds them (gpt-oss ships MXFP4 experts, DeepSeek-V3 fp8 blocks: both train dequantized).
NOT_MODEL_KEYS = ("architectures", "transformers_version", "_name_or_path", "auto_map", "torch_dtype", "dtype",
                  "quantization_config")
LAYER = re.compile(r"^(.*?\.)(\d+)(\..*|$)")


def config_object(cfg: Mapping[str, Any]) -> PretrainedConfig:
    """The transformers config of a config.json dict, class defaults filled in."""
    # a deep copy: transformers rewrites nested dicts it is given (rope_scaling -> rope_parameters)
    rest = copy.deepcopy({k: v for k, v in cfg.items() if k not in NOT_MODEL_KEYS and k != "model_type"})
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if cfg["model_type"] not in CONFIG_MAPPING:
        raise ConfigError(f"model_type {cfg['model_type']!r} is not an architecture of transformers "
                          f"{transformers.__version__}; peftcalc builds any model type transformers knows")
    try:
        return AutoConfig.for_model(cfg["model_type"], **rest)
    except Exception as e:  # noqa: BLE001 - config classes validate with their own exception types
        raise ConfigError(f"transformers {transformers.__version__} cannot read this config: {str(e).splitlines()[0]}") from None


def is_multimodal(config: PretrainedConfig) -> bool:
    """The config holds a language model's config beside other towers (vision, audio)."""
    return "text_config" in dict(getattr(config, "sub_configs", None) or {})


def build_plan(config: PretrainedConfig, scope: Scope) -> tuple[Any, PretrainedConfig, str, Scope]:
    """The auto class, the config it builds from, the kind of model (decoder, encoder-decoder, encoder) and the scope
    built: a multimodal checkpoint whose language model has no causal-LM class of its own (Qwen2.5-VL, Llama 3.2
    Vision ...) is built whole, as fine-tuning it loads it."""
    if is_multimodal(config):
        text = config.get_text_config(decoder=True)
        if scope == "full" or text.model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            if config.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
                return AutoModelForImageTextToText, config, "decoder", "full"
            if config.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
                return AutoModelForCausalLM, config, "decoder", "full"
        config = text
    if getattr(config, "is_encoder_decoder", False) and \
            config.model_type in modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForSeq2SeqLM, config, "encoder-decoder", scope
    if config.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM, config, "decoder", scope
    if config.model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM, config, "encoder", scope
    if config.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:  # one config for every tower
        return AutoModelForImageTextToText, config, "decoder", "full"
    raise ConfigError(f"model_type {config.model_type!r}: transformers {transformers.__version__} has no causal-LM, "
                      "seq2seq or masked-LM class for it, so peftcalc cannot build it")


def build_meta(cfg: Mapping[str, Any], scope: Scope = "text", dtype: torch.dtype = BUILD_DTYPE,
               **overrides: Any) -> tuple[nn.Module, PretrainedConfig, str, Scope]:
    """The model of a config.json dict on the meta device (no memory, any size), its config, its kind and the scope
    built."""
    auto, config, kind, built = build_plan(config_object(cfg), scope)
    for k, v in overrides.items():
        setattr(config, k, v)
    with torch.device("meta"):
        try:
            model = auto.from_config(config, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - whatever transformers raises on this config: one line for the user
            raise ConfigError(f"transformers could not build {config.model_type} from this config: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return model, config, kind, built


def template(name: str) -> tuple[str, int | None]:
    """`model.layers.7.mlp.up_proj` -> (`model.layers.{i}.mlp.up_proj`, 7); names outside a stack -> (name, None)."""
    m = LAYER.match(name)
    if not m:
        return name, None
    return f"{m.group(1)}{{i}}{m.group(3)}", int(m.group(2))


class DtypePlan:
    """transformers' keep-in-fp32 plan for half-precision loads, matched as from_pretrained matches it
    (core_model_loading: a regex search of each checkpoint key)."""

    def __init__(self, model: nn.Module) -> None:
        def regex(dtype: torch.dtype) -> re.Pattern | None:
            plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
            return build_glob_alternation(list(plan))[0] if plan else None

        self.strict = regex(torch.bfloat16)  # _keep_in_fp32_modules_strict: fp32 under bf16 and fp16
        self.fp16 = regex(torch.float16)  # plus _keep_in_fp32_modules: fp32 under fp16

    def rule(self, name: str, built: torch.dtype, loaded: bool) -> str:
        """The dtype rule of a tensor built in `built` dtype (model/spec.py resolve_dtype)."""
        if built != BUILD_DTYPE:
            return DTYPE_NAMES.get(built, str(built).removeprefix("torch."))
        if loaded and self.strict is not None and self.strict.search(name):
            return "fp32"
        if loaded and self.fp16 is not None and self.fp16.search(name):
            return FP32_UNDER_FP16
        return ""


def owners(model: nn.Module) -> dict[str, nn.Module]:
    """Each parameter's and buffer's full name -> the module that holds it."""
    out: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = module
        for bname, _ in module.named_buffers(recurse=False):
            out[f"{mname}.{bname}" if mname else bname] = module
    return out


def param_kind(name: str, module: nn.Module, tensor: torch.Tensor) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Embedding):
        return "position" if re.search(r"position|wpe|relative_attention", name) else "embedding"
    if "norm" in type(module).__name__.lower() or re.search(r"norm", leaf) and tensor.dim() == 1:
        return "norm"
    if "experts" in name.split(".")[:-1] and "shared_experts" not in name:
        return "expert"  # transformers 5's fused expert tensors (E, out, in) and their biases
    return "other"


def _grouped(entries: list[tuple[tuple, int | None]]) -> list[tuple[tuple, list[int]]]:
    """(key, layer index) pairs -> (key, sorted layer indices) in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for key, idx in entries:
        groups.setdefault(key, [])
        if idx is not None:
            groups[key].append(idx)
    return list(groups.items())


def linear_entries(model: nn.Module, plan: DtypePlan, canonical: dict[int, str], kind: str) -> list[dict[str, Any]]:
    """Every nn.Linear and transformers Conv1D (what peft's all-linear sees), grouped into templates."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    rows: list[tuple[tuple, int | None]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        w = module.weight
        conv1d = isinstance(module, Conv1D)
        fan_in, fan_out = (w.shape[0], w.shape[1]) if conv1d else (w.shape[1], w.shape[0])
        tied = canonical[id(w)] != f"{name}.weight"
        rule = plan.rule(f"{name}.weight", w.dtype, loaded=not tied)
        tpl, idx = template(name)
        block = "decoder" if module is head and kind == "encoder-decoder" else _block(name, kind)
        rows.append(((tpl, int(fan_in), int(fan_out), module.bias is not None, conv1d, module is head, tied, rule,
                      block), idx))
    out = []
    for (tpl, fan_in, fan_out, bias, conv1d, is_head, tied, rule, block), idx in _grouped(rows):
        entry: dict[str, Any] = {"name": tpl, "in": fan_in, "out": fan_out, "bias": bias}
        entry.update({k: v for k, v in (("conv1d", conv1d), ("head", is_head), ("tied", tied), ("dtype", rule),
                                        ("block", block)) if v})
        out.append(_with_layers(entry, tpl, idx))
    return out


def tensor_entries(model: nn.Module, plan: DtypePlan, linear_params: set[str]) -> tuple[list, list]:
    """Parameters outside linears (embeddings, norms, fused experts, routers, Mamba's A_log ...) and buffers."""
    held = owners(model)
    persistent = {f"{m}.{b}" if m else b for m, mod in model.named_modules() for b, _ in mod.named_buffers(recurse=False)
                  if b not in getattr(mod, "_non_persistent_buffers_set", set())}
    params: list[tuple[tuple, int | None]] = []
    for name, p in model.named_parameters():
        if name in linear_params:
            continue
        tpl, idx = template(name)
        params.append(((tpl, tuple(p.shape), param_kind(name, held[name], p), plan.rule(name, p.dtype, True)), idx))
    buffers: list[tuple[tuple, int | None]] = []
    for name, b in model.named_buffers():
        tpl, idx = template(name)
        buffers.append(((tpl, tuple(b.shape), "buffer", plan.rule(name, b.dtype, name in persistent)), idx))
    return [_tensor_entry(k, idx) for k, idx in _grouped(params)], [_tensor_entry(k, idx) for k, idx in _grouped(buffers)]


def _tensor_entry(key: tuple, idx: list[int]) -> dict[str, Any]:
    tpl, shape, kind, rule = key
    entry: dict[str, Any] = {"name": tpl, "shape": list(shape), "kind": kind}
    if rule:
        entry["dtype"] = rule
    return _with_layers(entry, tpl, idx)


def _with_layers(entry: dict[str, Any], tpl: str, idx: list[int]) -> dict[str, Any]:
    if "{i}" in tpl:
        entry["layers"] = format_layers(sorted(idx))
    return entry


def _block(name: str, kind: str) -> str:
    if kind != "encoder-decoder":
        return ""
    first = name.split(".")[:2]
    return "encoder" if "encoder" in first else "decoder" if "decoder" in first else ""


def first_attr(config: PretrainedConfig, names: tuple[str, ...], default: Any = None) -> Any:
    """The first of `names` the config sets to a number (configs name the same number differently); a per-layer
    list gives its largest value; an attribute the config refuses to give globally (per-layer configs) is skipped."""
    for n in names:
        try:
            v = getattr(config, n, None)
        except Exception:  # noqa: BLE001 - e.g. transformers' AmbiguousGlobalPerLayerAttributeError
            continue
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) for x in v):
            v = max(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


# Leaf names of an attention's query projection (separate, fused, MLA's, GPT-2's, BERT's, T5's): a block holding one
# has softmax attention; linear-attention, Mamba and convolution blocks do not.
QUERY_LEAVES = ("q_proj", "qkv_proj", "query_key_value", "c_attn", "q_a_proj", "Wqkv", "query", "q", "qkv")


def attention_layers(linears: list[dict[str, Any]]) -> int | None:
    """Blocks of the language model with softmax attention, counted in the inventory; None when every block has it
    (or none is recognised)."""
    blocks: set[tuple[str, int]] = set()
    attn: set[tuple[str, int]] = set()
    stacks = {l["name"].split("{i}")[0] for l in linears if "layers" in l}
    text = {s for s in stacks if "language_model" in s} or stacks
    for l in linears:
        prefix = l["name"].split("{i}")[0]
        if "layers" not in l or prefix not in text:
            continue
        idx = {(prefix, i) for i in parse_layers(l["layers"])}
        blocks |= idx
        if l["name"].rsplit(".", 1)[-1] in QUERY_LEAVES:
            attn |= idx
    return None if not attn or attn == blocks else len(attn)


def architecture(model: nn.Module, config: PretrainedConfig, kind: str, linears: list[dict]) -> dict[str, Any]:
    """The Architecture numbers the formulas need, read from the (text) config transformers filled in."""
    text = config.get_text_config(decoder=True) if is_multimodal(config) else config
    try:
        embedding = model.get_input_embeddings()
    except NotImplementedError:  # models that do not name their input embeddings
        embedding = None
    hidden = int(first_attr(text, ("hidden_size", "d_model", "n_embd"), getattr(embedding, "embedding_dim", 0)))
    heads = int(first_attr(text, ("num_attention_heads", "n_head", "num_heads"), 1))
    kv = int(first_attr(text, ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"), heads))
    head_dim = first_attr(text, ("qk_head_dim", "head_dim", "attention_head_dim", "d_kv")) or hidden // heads
    layers = int(first_attr(text, ("num_hidden_layers", "num_layers", "n_layer"), 0)) or len(
        {(l["name"].split("{i}")[0], i) for l in linears if "layers" in l for i in parse_layers(l["layers"])})
    decoder_layers = first_attr(text, ("num_decoder_layers", "decoder_layers")) if kind == "encoder-decoder" else None
    experts = int(first_attr(text, ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"), 0) or 0)
    if not any(".experts." in f"{n}." for n, _ in model.named_parameters()):
        experts = 0  # a MoE config whose layers hold no experts (a hybrid pattern without MoE layers)
    top_k = int(first_attr(text, ("num_experts_per_tok", "moe_topk", "num_experts_per_token", "top_k"), 0) or 0)
    width = getattr(embedding, "embedding_dim", hidden)
    names = " ".join(l["name"] for l in linears)
    gated = bool(re.search(r"gate_proj|gate_up_proj|\.w1\b|wi_0|\.w3\b", names)) or any(
        "gate_up_proj" in n for n, _ in model.named_parameters())
    rms = any("rmsnorm" in type(m).__name__.lower() for m in model.modules())
    return {
        "family": text.model_type, "kind": kind, "hidden_size": hidden,
        "num_layers": layers + int(decoder_layers or 0), "num_heads": heads, "num_kv_heads": kv,
        "head_dim": int(head_dim),
        "ffn_size": int(first_attr(text, ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "ffn_hidden_size",
                                          "decoder_ffn_dim"),
                                   4 * hidden)),
        "vocab_size": int(first_attr(text, ("vocab_size",), getattr(embedding, "num_embeddings", 0))),
        "gated_mlp": gated,
        "tie_embeddings": any(l.get("head") and l.get("tied") for l in linears),
        "norm": "rmsnorm" if rms else "layernorm",
        "num_encoder_layers": layers if kind == "encoder-decoder" else 0,
        "num_experts": experts if top_k else 0, "experts_per_token": top_k if experts else 0,
        "max_positions": first_attr(text, ("max_position_embeddings", "n_positions")),
        "embed_dim": int(width) if width != hidden else None,
        "attention_layers": attention_layers(linears),
    }


def inventory(cfg: Mapping[str, Any], scope: Scope = "text") -> dict[str, Any]:
    """The inventory (plain data, INVENTORY_FORMAT) of the model a config.json dict describes."""
    if not isinstance(cfg, Mapping) or not cfg.get("model_type"):
        raise ConfigError("expected a Hugging Face config.json object with a 'model_type' key")
    sha = config_sha256(cfg)
    model, config, kind, built = build_meta(cfg, scope)
    canonical: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
    plan = DtypePlan(model)
    linears = linear_entries(model, plan, canonical, kind)
    linear_params = {f"{n}.{leaf}" for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))
                     for leaf in ("weight", "bias")}
    params, buffers = tensor_entries(model, plan, linear_params)
    top = config_object(cfg)
    return {
        "format": INVENTORY_FORMAT,
        "config_sha256": sha,
        "scope": scope,  # as asked: build_plan builds the same model from it again (measure/hf_model.py)
        "multimodal": is_multimodal(top),
        "model_class": type(model).__name__,
        "model_type": config.model_type,
        "transformers_version": transformers.__version__,
        "total_params": sum(p.numel() for p in model.parameters()),
        "arch": architecture(model, config, kind, linears),
        "linears": linears,
        "params": params,
        "buffers": buffers,
        "notes": inventory_notes(cfg, top, scope, built),
        "config": json.loads(json.dumps(model.config.to_dict(), sort_keys=True, default=str)),
    }


MTP_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers")


def inventory_notes(cfg: Mapping[str, Any], top: PretrainedConfig, scope: Scope, built: Scope) -> list[str]:
    """What the inventory leaves out or assumes, said in every estimate of the model."""
    notes = []
    if is_multimodal(top) and built != scope:
        notes.append(f"multimodal checkpoint whose language model has no causal-LM class of its own in transformers: "
                     f"the whole {top.model_type} is counted, its other towers loaded as fine-tuning loads them")
    elif is_multimodal(top):
        notes.append("multimodal checkpoint: every tower counted (--full-model)" if scope == "full" else
                     "multimodal checkpoint: text-only fine-tuning, the language model and its head "
                     "(--full-model for every tower)")
    q = cfg.get("quantization_config")
    if isinstance(q, Mapping):
        method = q.get("quant_method") or q.get("quant_type") or "quantized"
        notes.append(f"the checkpoint ships {method} weights (quantization_config); fine-tuning holds them "
                     "dequantized, in the precision recipe's dtype, as counted here")
    text = top.get_text_config(decoder=True) if is_multimodal(top) else top
    mtp = next((int(getattr(text, k)) for k in MTP_KEYS if isinstance(getattr(text, k, None), int)
                and getattr(text, k) > 0), 0)
    if mtp:
        notes.append(f"transformers does not build the checkpoint's {mtp} multi-token-prediction layer(s); they are "
                     "not counted (they do not train in a transformers fine-tuning run)")
    return notes


def apply_dtype_plan(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast what from_pretrained loads in fp32 (the keep-in-fp32 plan for a half-precision `dtype`) to fp32, so a
    model built from its config holds the dtypes a loaded checkpoint has."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return
    regex = build_glob_alternation(list(plan))[0]
    persistent_buffers = {f"{m}.{b}" if m else b for m, mod in model.named_modules()
                          for b, _ in mod.named_buffers(recurse=False)
                          if b not in getattr(mod, "_non_persistent_buffers_set", set())}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype == dtype and regex.search(name):
                p.data = p.data.to(torch.float32)
        for mname, module in model.named_modules():
            for bname, b in list(module.named_buffers(recurse=False)):
                full = f"{mname}.{bname}" if mname else bname
                if b is not None and b.dtype == dtype and full in persistent_buffers and regex.search(full):
                    setattr(module, bname, b.to(torch.float32))



def main(argv: list[str] | None = None) -> int:
    """`python -m peftcalc.measure.derive CONFIG.json [--full-model]` prints the inventory of one config."""
    ap = argparse.ArgumentParser(prog="python -m peftcalc.measure.derive", description=main.__doc__)
    ap.add_argument("config", help="a config.json to derive")
    ap.add_argument("--full-model", action="store_true", help="every tower of a multimodal checkpoint")
    args = ap.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    sys.stdout.write(inventory_text(inventory(cfg, "full" if args.full_model else "text")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
