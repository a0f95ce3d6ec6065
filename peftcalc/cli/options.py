"""Options shared by every command that takes a model, a method and a setup (same names everywhere)."""

from __future__ import annotations

import re
from typing import Any, Callable

import click

from peftcalc.errors import PeftcalcError
from peftcalc.methods import ALL_METHOD_NAMES, MethodOptions
from peftcalc.methods.peft_catalogue import REFUSED
from peftcalc.methods.targets import parse_targets
from peftcalc.model.spec import ModelSpec
from peftcalc.optim import OPTIMIZERS
from peftcalc.precision import RECIPES
from peftcalc.quant import CURRENT_BITSANDBYTES
from peftcalc.setup import ATTENTIONS, LOSSES, SHARDINGS, STATE_DTYPES, Setup
from peftcalc.units import Unit

SHAPE_OPTIONS = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
                 "kv_heads": "num_key_value_heads", "ffn": "intermediate_size", "vocab": "vocab_size"}


class Count(click.ParamType):
    """An exact positive integer, also written as 7e9 or 6.7e9 (must be whole)."""

    name = "N"

    NUMBER = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).replace("_", "").replace(",", "").strip()
        m = self.NUMBER.fullmatch(text)
        if not m or not (m.group(2) or m.group(3)):
            self.fail(f"{value!r} is not a number (try 7e9 or 7000000000)", param, ctx)
        sign, whole, frac, exp = m.group(1), m.group(2) or "0", m.group(3) or "", int(m.group(4) or 0)
        digits, shift = int(whole + frac), exp - len(frac)  # exact integer arithmetic, no float rounding
        if shift < 0:
            if digits % 10**-shift:
                self.fail(f"{value!r} is not a whole number", param, ctx)
            number = digits // 10**-shift
        else:
            number = digits * 10**shift
        return -number if sign == "-" else number


def _compose(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


model_options = _compose(
    click.option("--params", type=Count(), help="A bare parameter count, e.g. 7e9 (a Llama-style shape is inferred)."),
    click.option("--model", "model_name", metavar="NAME",
                 help="A catalogue model (see `peftcalc models`) or a Hugging Face id (Qwen/Qwen3-8B: the catalogue, "
                      "the local Hugging Face cache, then the Hub)."),
    click.option("--config", "config_path", type=click.Path(dir_okay=True), help="A local Hugging Face config.json."),
    click.option("--full-model", is_flag=True,
                 help="Multimodal checkpoints: fine-tune every tower (default: the language model and its head)."),
    click.option("--hidden", type=int, help="With --params: hidden size."),
    click.option("--layers", type=int, help="With --params: number of layers."),
    click.option("--heads", type=int, help="With --params: attention heads."),
    click.option("--kv-heads", type=int, help="With --params: key/value heads (grouped-query attention)."),
    click.option("--ffn", type=int, help="With --params: feed-forward width."),
    click.option("--vocab", type=int, help="With --params: vocabulary size."),
)

method_options = _compose(
    click.option("--rank", type=int, default=None,
                 help="LoRA/DoRA/QLoRA rank (default 8); for methods derived from peft, peft's `r` (default: peft's)."),
    click.option("--targets", help="Modules to adapt: q_proj,v_proj or all-linear (default: peft's per family)."),
    click.option("--virtual-tokens", type=int, default=20, show_default=True, help="Prompt/prefix/p-tuning length."),
    click.option("--bottleneck", type=int, default=64, show_default=True, help="Adapter bottleneck width."),
    click.option("--adapter-variant", type=click.Choice(["houlsby", "pfeiffer"]), default="houlsby", show_default=True),
    click.option("--prefix-projection", is_flag=True, help="Prefix tuning with the reparameterization MLP."),
    click.option("--quant-bits", type=click.Choice(["4", "8"]), default="4", show_default=True,
                 help="QLoRA base: 4-bit (bitsandbytes, as transformers' BitsAndBytesConfig loads it) or 8-bit "
                      "(LLM.int8)."),
    click.option("--quant-type", type=click.Choice(["nf4", "fp4"]), default="nf4", show_default=True,
                 help="QLoRA 4-bit data type (bnb_4bit_quant_type)."),
    click.option("--double-quant/--no-double-quant", default=True, show_default=True,
                 help="QLoRA 4-bit: quantize the absmax again (bnb_4bit_use_double_quant; the paper's recipe)."),
    click.option("--quant-storage", type=click.Choice(["uint8", "bf16", "fp16", "fp32"]), default="uint8",
                 show_default=True, help="QLoRA 4-bit: the dtype the packed codes are stored in "
                                         "(bnb_4bit_quant_storage; bf16 for FSDP-QLoRA)."),
    click.option("--peft-option", "peft_options", multiple=True, metavar="KEY=VALUE",
                 help="A field of the peft config of a method derived from peft (repeatable), e.g. "
                      "--method vera --peft-option vera_dropout=0.1; VALUE is read as JSON when it parses."),
    click.option("--modules-to-save", metavar="NAMES",
                 help="Modules trained in full beside the adapter, as peft's modules_to_save: embed_tokens,lm_head."),
    click.option("--lora-dropout", type=float, default=0.0, show_default=True,
                 help="peft's lora_dropout for LoRA/DoRA/QLoRA (each adapted module keeps its dropped input)."),
)

def setup_options_with(precision: str = "fp32") -> Callable:
    """The setup options; `precision` is the command's default recipe."""
    return _compose(
        click.option("--precision", type=click.Choice(list(RECIPES)), default=precision, show_default=True),
        click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default="adamw", show_default=True),
        click.option("--adamw-impl", type=click.Choice(["forloop", "foreach", "fused"]), default="foreach",
                     show_default=True, help="torch AdamW implementation (temporaries differ)."),
        click.option("--batch", type=int, default=1, show_default=True, help="Micro-batch per GPU."),
        click.option("--gradient-accumulation", type=int, default=1, show_default=True,
                     help="Micro-batches per optimizer step (their gradients are kept between them)."),
        click.option("--seq", type=int, default=512, show_default=True, help="Sequence length in tokens."),
        click.option("--attention", type=click.Choice(list(ATTENTIONS)), default="sdpa", show_default=True,
                     help="Attention kernel: sdpa (torch's flash/memory-efficient kernels on CUDA), "
                          "flash_attention_2, flex_attention or eager (materialises the scores)."),
        click.option("--loss", type=click.Choice(list(LOSSES)), default="standard", show_default=True,
                     help="Cross-entropy: standard (whole fp32 logits), chunked (torchtune's 8 chunks) or fused "
                          "(Liger's fused linear cross-entropy, no logits)."),
        click.option("--packing", is_flag=True, help="Several sequences packed per row (no padding; position ids)."),
        click.option("--padded", is_flag=True,
                     help="Rows padded to the longest of the batch (transformers passes an attention mask)."),
        click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward."),
        click.option("--reentrant-checkpointing", is_flag=True,
                     help="With --gradient-checkpointing: use_reentrant=True (full recompute; default False, "
                          "transformers 5's)."),
        click.option("--optimizer-state-dtype", type=click.Choice(list(STATE_DTYPES)), default=None,
                     help="Keep optimizer states in this dtype (default: the parameter's, as torch's AdamW)."),
        click.option("--transformers-version", metavar="X.Y", default=None,
                     help="The transformers release whose code runs (default: today's; before 4.49 the causal-LM "
                          "loss keeps a second fp32 copy of the logits)."),
        click.option("--kbit-preparation/--no-kbit-preparation", default=True, show_default=True,
                     help="QLoRA: peft's prepare_model_for_kbit_training, as users run it (non-quantized parameters "
                          "to fp32, gradient checkpointing on); off: the quantized model as loaded (e.g. litgpt)."),
        click.option("--kbit-checkpointing/--no-kbit-checkpointing", default=True, show_default=True,
                     help="QLoRA with kbit preparation: its use_gradient_checkpointing (peft's default on; TRL passes "
                          "its own gradient_checkpointing: then give --no-kbit-checkpointing and set "
                          "--gradient-checkpointing as the run did)."),
        click.option("--bitsandbytes-version", metavar="X.Y.Z",
                     help="QLoRA: the bitsandbytes release the run used (default: today's, "
                          f"{CURRENT_BITSANDBYTES}); before 0.43.2 every 4-bit linear kept its input for backward."),
        click.option("--gpus", type=int, default=1, show_default=True, help="Data-parallel GPUs."),
        click.option("--zero", type=click.Choice(["0", "1", "2", "3"]), default="0", show_default=True,
                     help="ZeRO stage (3 = FSDP full sharding)."),
        click.option("--offload", is_flag=True, help="Optimizer states in CPU memory (ZeRO-Offload)."),
        click.option("--offload-params", is_flag=True, default=None,
                     help="With --zero 3: weight shards (and, with --offload, gradient shards) in CPU memory too "
                          "(FSDP CPUOffload / DeepSpeed offload_param)."),
        click.option("--sharding", type=click.Choice(list(SHARDINGS)), default=None,
                     help="What shards ZeRO 1-3: fsdp2 (torch fully_shard; default for 2-3), fsdp1 (torch "
                          "FullyShardedDataParallel, flat parameters) or deepspeed (default for 1)."),
        click.option("--fp32-shards", is_flag=True, default=None,
                     help="FSDP under mixed precision over a 16-bit model: trainable shards, their gradients and "
                          "optimizer states in fp32 (accelerate's upcast), compute in the precision's dtype."),
        click.option("--ds-auto-buckets", is_flag=True, default=None,
                     help="With --sharding deepspeed: the bucket sizes transformers gives DeepSpeed's \"auto\" "
                          "(reduce h*h, prefetch 0.9*h*h, persistence 10*h for hidden size h) instead of "
                          "DeepSpeed's defaults."),
        click.option("--fsdp-forward-prefetch", is_flag=True, default=None,
                     help="With --sharding fsdp1: forward_prefetch=True (the next unit gathered during the current "
                          "unit's forward)."),
        click.option("--ds-max-live-parameters", type=int, default=None, metavar="N",
                     help="With --sharding deepspeed: stage3_max_live_parameters (default 1e9; 0 releases each "
                          "gathered module at once)."),
        click.option("--ds-max-reuse-distance", type=int, default=None, metavar="N",
                     help="With --sharding deepspeed: stage3_max_reuse_distance (default 1e9)."),
        click.option("--tp", type=int, default=1, show_default=True,
                     help="Tensor-parallel GPUs per model replica (Megatron layout; llama-style decoders)."),
        click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages (1F1B)."),
        click.option("--sequence-parallel", is_flag=True, help="With --tp: activations split over the tensor ranks."),
        click.option("--compile", is_flag=True, default=None,
                     help="The model runs under torch.compile: pointwise operators fuse between matmuls (time only)."),
        click.option("--grad-clipping/--no-grad-clipping", default=None,
                     help="clip_grad_norm_ before each optimizer step (time only; default on, as transformers' "
                          "Trainer clips at max_grad_norm=1.0)."),
        click.option("--adapter-dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
                     help="Adapter weights' dtype (default: the recipe's, fp32 as peft keeps them; bf16 as TRL's "
                          "QLoRA and torchtune do)."),
        click.option("--overhead", metavar="SPEC",
                     help="Lines above the tensors: 'none', or NAME=SIZE,... with NAME workspace, rounding (allocated), "
                          "segments, fragmentation (reserved) or context (device total), e.g. "
                          "context=600MiB,fragmentation=10%. Default: the stated defaults (peftcalc/overhead.py)."),
    )


# estimate reproduces the seed document (fp32); planning defaults to what real runs use (bf16-mixed).
setup_options = setup_options_with("fp32")
planning_setup_options = setup_options_with("bf16-mixed")

# Training config files: their values under the flags given on the command line.
from_options = _compose(
    click.option("--from", "from_files", multiple=True, metavar="FILE",
                 help="A training config to read the setup from: axolotl, TRL/Trainer, torchtune, LLaMA-Factory YAML "
                      "or a peft adapter_config.json, plus its DeepSpeed/accelerate files (repeatable). Flags given "
                      "override it."),
    click.option("--from-kind", type=click.Choice(["axolotl", "trl", "torchtune", "llamafactory", "peft",
                                                   "deepspeed", "accelerate"]),
                 help="The kind of every --from file (default: detected from its fields)."),
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
csv_option = click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
units_option = click.option("--units", type=click.Choice(["GB", "GiB"]), default="GB", show_default=True,
                            help="GB = 10^9 bytes, GiB = 2^30 bytes.")
format_options = _compose(json_option, csv_option)
output_options = _compose(units_option, json_option, csv_option)

# Every name --method takes, and peft's tuners that cannot be sized from a config (refused with the reason).
METHOD_NAMES = list(ALL_METHOD_NAMES) + sorted(REFUSED)
one_method_option = click.option("--method", type=click.Choice(METHOD_NAMES), metavar="NAME",
                                 help="One method, peftcalc's or any of peft's by peft's name (loha, vera, oft ...; "
                                      "`peftcalc methods` lists them; default: compare peftcalc's own).")
methods_option = click.option("--method", "methods", multiple=True, type=click.Choice(METHOD_NAMES), metavar="NAME",
                              help="A method, peftcalc's or peft's (repeatable; default: peftcalc's own).")
tasks_option = click.option("--tasks", type=int, default=10, show_default=True,
                            help="Tasks for the storage comparison.")
gpu_file_option = click.option("--gpu-file", "gpu_files", multiple=True, metavar="PATH",
                               help="A JSON file of GPUs (one object or a list) that adds to or overrides the "
                                    "catalogue (repeatable).")
DEFAULT_TOKENS = 100_000_000

# What plan and report need beyond the model, method and setup: the GPUs, how far to scale, how much to train.
planning_options = _compose(
    click.option("--gpu", "gpu_ids", multiple=True, metavar="ID",
                 help="A GPU to consider (repeatable; default: the whole catalogue, see `peftcalc gpus`)."),
    gpu_file_option,
    click.option("--max-gpus", type=int, default=8, show_default=True,
                 help="Most GPUs of one type to scale out to (DDP, ZeRO 1/2/3, offload)."),
    click.option("--tokens", type=Count(), default=str(DEFAULT_TOKENS), show_default=True,
                 help="Training tokens per epoch, e.g. 50e6."),
    click.option("--epochs", type=float, default=1.0, show_default=True,
                 help="Passes over --tokens (may be fractional)."),
    click.option("--steps", type=int, default=None,
                 help="Optimizer steps instead of --tokens x --epochs: steps x tokens per step (micro-batch x "
                      "accumulation x GPUs x --seq at the setup asked)."),
    click.option("--mfu", type=float, default=None,
                 help="Your measured model FLOPs utilisation in (0, 1], applied to every GPU and method instead of "
                      "the kernel model (default: the replayed step's kernels at each GPU's rates; see assumptions)."),
)


def resolve_gpus(kw: dict[str, Any]) -> tuple[Any, ...]:
    """The GPUs --gpu names (from the catalogue plus --gpu-file entries), else every one, user entries first."""
    from peftcalc.hardware.catalogue import all_gpus, catalogue_with, get_gpu

    catalogue = catalogue_with(kw["gpu_files"])
    if kw["gpu_ids"]:
        return tuple(dict.fromkeys(get_gpu(g, catalogue) for g in kw["gpu_ids"]))
    builtin = {g.id for g in all_gpus()}
    return tuple(sorted(catalogue.values(), key=lambda g: (g.id in builtin, g.id)))




def resolve_spec(kw: dict[str, Any]) -> ModelSpec:
    given = [k for k in ("params", "model_name", "config_path") if kw.get(k) is not None]
    if len(given) != 1:
        raise PeftcalcError("name the model exactly one way: --params N, --model NAME or --config PATH"
                            + (f" (got {', '.join('--' + g.split('_')[0] for g in given)})" if given else ""))
    shape = {SHAPE_OPTIONS[k]: kw.get(k) for k in SHAPE_OPTIONS}
    if kw.get("full_model") and kw.get("params") is not None:
        raise PeftcalcError("--full-model applies to a multimodal --model or --config, not to --params")
    if any(v is not None for v in shape.values()) and kw.get("params") is None:
        raise PeftcalcError("--hidden/--layers/--heads/--kv-heads/--ffn/--vocab shape a bare --params count; "
                            "a --model or --config already has its shape")
    if kw.get("params") is not None:
        from peftcalc.model.infer import infer_spec

        return infer_spec(kw["params"], **shape)
    scope = "full" if kw.get("full_model") else "text"
    if kw.get("model_name") is not None:
        from peftcalc.model.hub import resolve_model

        return resolve_model(kw["model_name"], scope)
    from peftcalc.model.hf_config import load_config

    return load_config(kw["config_path"], scope)


# Setup field -> the keyword its flag fills. Keywords a command has no flag for (yet) may still be set by a
# --from file or the Python API; absent ones leave the Setup default.
SETUP_KEYWORDS = {"precision": "precision", "optimizer": "optimizer", "batch_size": "batch", "seq_len": "seq",
                  "gradient_accumulation": "gradient_accumulation", "gradient_checkpointing": "gradient_checkpointing",
                  "reentrant_checkpointing": "reentrant_checkpointing", "attention": "attention", "loss": "loss",
                  "packing": "packing", "adamw_impl": "adamw_impl", "optimizer_state_dtype": "optimizer_state_dtype",
                  "adapter_dtype": "adapter_dtype", "kbit_preparation": "kbit_preparation",
                  "kbit_gradient_checkpointing": "kbit_checkpointing",
                  "bitsandbytes_version": "bitsandbytes_version", "num_gpus": "gpus", "zero_stage": "zero",
                  "offload": "offload", "offload_params": "offload_params", "tensor_parallel": "tp",
                  "pipeline_parallel": "pp", "sequence_parallel": "sequence_parallel",
                  "padded": "padded", "transformers_version": "transformers_version", "compile": "compile",
                  "grad_clipping": "grad_clipping", "sharding": "sharding",
                  "fp32_shards": "fp32_shards", "fsdp_backward_prefetch": "fsdp_backward_prefetch",
                  "fsdp_forward_prefetch": "fsdp_forward_prefetch", "ds_reduce_bucket_size": "ds_reduce_bucket_size",
                  "ds_prefetch_bucket_size": "ds_prefetch_bucket_size",
                  "ds_param_persistence_threshold": "ds_param_persistence_threshold",
                  "ds_max_live_parameters": "ds_max_live_parameters", "ds_max_reuse_distance": "ds_max_reuse_distance",
                  "ds_auto_buckets": "ds_auto_buckets"}


def resolve_setup(kw: dict[str, Any]) -> Setup:
    values = {field: kw[key] for field, key in SETUP_KEYWORDS.items() if kw.get(key) is not None}
    if "zero_stage" in values:
        values["zero_stage"] = int(values["zero_stage"])
    return Setup(**values)


def resolve_overhead(kw: dict[str, Any]) -> Any:
    from peftcalc.overhead import OverheadSpec

    return OverheadSpec.parse(kw.get("overhead"))


def parse_peft_options(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PeftcalcError(f"--peft-option {item!r}: expected KEY=VALUE, e.g. vera_dropout=0.1")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def resolve_method_options(kw: dict[str, Any]) -> MethodOptions:
    rank = kw.get("rank")
    return MethodOptions(rank=8 if rank is None else rank, targets=parse_targets(kw.get("targets")),
                         virtual_tokens=kw["virtual_tokens"], bottleneck=kw["bottleneck"],
                         adapter_variant=kw["adapter_variant"], prefix_projection=kw["prefix_projection"],
                         quant_bits=int(kw["quant_bits"]), lora_dropout=float(kw.get("lora_dropout") or 0.0),
                         quant_type=kw.get("quant_type", "nf4"), double_quant=kw.get("double_quant", True),
                         quant_storage=kw.get("quant_storage", "uint8"), rank_given=rank is not None,
                         peft_options=parse_peft_options(kw.get("peft_options") or ()),
                         modules_to_save=parse_modules(kw.get("modules_to_save")))


def parse_modules(text: str | None) -> tuple[str, ...]:
    """`--modules-to-save embed_tokens,lm_head` -> ("embed_tokens", "lm_head")."""
    if text is None:
        return ()
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise PeftcalcError("--modules-to-save is empty; give module names like embed_tokens,lm_head")
    return names


def apply_from(ctx: click.Context, kw: dict[str, Any], methods_key: str = "method") -> Any:
    """Read the --from files into `kw` under the flags given on the command line; None without --from.
    Returns a configs.apply.FromFiles (the \"from FILE\" section's content)."""
    if not kw.get("from_files"):
        if kw.get("from_kind"):
            raise PeftcalcError("--from-kind says what kind the --from files are: give --from FILE")
        return None
    from click.core import ParameterSource

    from peftcalc.configs import read_config
    from peftcalc.configs.apply import merge

    given = {p.name for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name) in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    configs = [read_config(path, kw.get("from_kind")) for path in kw["from_files"]]
    return merge(kw, given, configs, methods_key)


def resolve_unit(kw: dict[str, Any]) -> Unit:
    if kw.get("as_json") and kw.get("as_csv"):
        raise PeftcalcError("--json and --csv are exclusive: choose one")
    return Unit(kw["units"])
