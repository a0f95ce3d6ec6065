"""A published throughput record (bench/published/throughput) as the run peftcalc can time, or why it cannot.

What each source ran, where its record does not say, is read from the source's own code or configs at the commit the
record cites (each quoted below); nothing here is fitted to the published numbers.

* torchtune README 'Memory and training speed' table (commit 30b8519e, 2024-09): 'batch size 2 (without gradient
  accumulation), a dataset packed to sequence length 2048, and torch compile enabled', on the recipes' default configs
  at that commit (recipes/configs/llama3_1/8B_*_single_device.yaml): `enable_activation_checkpointing: True`,
  `dtype: bf16` (adapters too: torchtune's LoRALinear), `CEWithChunkedOutputLoss`, `clip_grad_norm` unset; LoRA
  `lora_attn_modules: ['q_proj', 'v_proj']`, rank 8, `torch.optim.AdamW` with `fused: True`; QLoRA `['q_proj', 'v_proj',
  'k_proj', 'output_proj']` + MLP, rank 8; full `bitsandbytes.optim.PagedAdamW8bit` with `optimizer_in_bwd: True`.
* torchtune README 'Optimization flags' table (commit f67ccda9, 2025-02): 'Baseline uses full_finetune_single_device,
  Llama 3.2 3B, Batch size 2, Max sequence length 4096, Precision bf16, A100'; 'Each technique is added on top of the
  previous one, except for LoRA and QLoRA, which do not use optimizer_in_bwd or AdamW8bit'; its command for the last
  row passes `optimizer=torch.optim.AdamW` over llama3_2/3B_qlora_single_device.yaml (`lora_attn_modules: ['q_proj',
  'v_proj', 'output_proj']`, `apply_lora_to_mlp: True`, `lora_rank: 64`, `fused: True`); the full rows use
  torch.optim.AdamW (foreach) until the 8-bit row. Activation offloading is taken as hidden behind compute (its row
  changes the rate by -0.11 %). The recipe counts `labels != ignore_index` tokens: a packed row's padding tail is not
  counted (a few %).
* torchtitan benchmarks/llama3_h100_202412_torchtitan.md with train_configs/llama3_8b.toml at 9dec370a: AdamW (foreach:
  `fused = false` by default), `max_norm = 1.0`, `selective_ac_option = 'op'`: parallelize_llama.py's policy saves
  `torch.ops.aten.mm.default` outputs except every second one (`meta[mm_count_key] % 2 == 0` recomputes) and recomputes
  every other operator. Hosts: 'default 500W power limit', '96GB HBM2e with 2.4 TB/sec' (the file).
* peft MetaMathQA (method_comparison/MetaMathQA at the record's commit): model in bf16 with `use_amp: false` and fp32
  adapters (autocast_adapter_dtype), torch.optim.AdamW (foreach) with weight_decay 0.1, `grad_norm_clip: 1.0`, batches
  padded to their longest row (the tokenizer pads, an attention mask goes in), 5000 steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from peftcalc.errors import PeftcalcError
from peftcalc.hardware.catalogue import Gpu, get_gpu
from peftcalc.methods import MethodOptions
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup

EXTRA_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "meta-llama/Llama-3.2-3B": (
        dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
             num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
             max_position_embeddings=131072),
        "Lightning-AI/litgpt litgpt/config.py, 'Llama-3.2-3B' (n_layer 28, n_embd 3072, n_head 24, "
        "n_query_groups 8, intermediate_size 8192, padded_vocab_size 128256), transcribing "
        "https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json; embeddings tied as in torchtitan's "
        "llama3 3B args ('share embedding')"),
}
CATALOGUE_MODELS = {"meta-llama/Llama-3.1-8B": "llama-3.1-8b", "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
                    "meta-llama/Llama-3.1-405B": "llama-3.1-405b", "meta-llama/Llama-2-7b-hf": "llama-2-7b",
                    "meta-llama/Llama-2-13b-hf": "llama-2-13b"}
GPUS = (("H200", "h200"), ("H100", "h100-80gb"), ("RTX 4090", "rtx-4090"), ("RTX A6000", "a6000"),
        ("A100-SXM4-40GB", "a100-40gb"), ("A100", "a100-80gb"), ("L40S", "l40s"))
METHODS = {"full": "full", "lora": "lora", "qlora": "qlora", "dora": "dora", "ia3": "ia3",
           "prompt_tuning": "prompt", "prefix_tuning": "prefix"}
METRICS = ("tokens_per_second_per_gpu", "train_step_seconds_total")
TORCHTUNE_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")
# torchtune's Llama 3.1 configs at 30b8519e: (targets, rank, optimizer, adamw implementation, CPU offload)
TORCHTUNE_31 = {("8B", "full"): ((), 8, "paged-adamw-8bit", "foreach", False),
                ("8B", "lora"): (("q_proj", "v_proj"), 8, "adamw", "fused", False),
                ("8B", "qlora"): (("q_proj", "v_proj", "k_proj", "o_proj") + MLP, 8, "adamw", "fused", False),
                ("70B", "full"): ((), 8, "adamw", "fused", True),  # 70B_full.yaml: fsdp_cpu_offload: True
                ("70B", "lora"): (("q_proj", "k_proj", "v_proj"), 16, "adamw", "fused", False),
                ("405B", "qlora"): (("q_proj", "v_proj", "k_proj", "o_proj") + MLP, 16, "adamw", "fused", False)}
OPTFLAGS = ("baseline", "packed", "compile", "chunked-ce", "act-ckpt", "opt-in-bwd", "act-offload", "adamw8bit")
# parallelize_llama.py's op-level selective checkpointing recomputes every second mm of a block: q, k, v, o, gate,
# up, down in the order Llama's block runs them (torchtitan models/llama/model.py) -> k, o and up are recomputed
TITAN_RECOMPUTED = ("k_proj", "o_proj", "up_proj")
TITAN_POWER_WATTS = 500
TITAN_BANDWIDTH = 2_400_000_000_000  # '96GB HBM2e with 2.4 TB/sec'


@dataclass(frozen=True)
class Case:
    """A record peftcalc can model: what ran, and what the source printed."""

    id: str
    source: str  # the record's file stem (torchtitan, torchtune, ...)
    spec: ModelSpec
    method: str
    options: MethodOptions
    setup: Setup
    gpu: Gpu
    metric: str
    published: float
    steps: int | None  # train_step_seconds_total: the optimizer steps the run took
    assumptions: tuple[str, ...]
    power_watts: int | None = None  # the GPUs ran capped at this power
    recomputed: tuple[str, ...] = ()  # linears a selective checkpointing policy recomputes (torchtitan's op SAC)


def case_of(record: Mapping[str, Any]) -> Case:
    """The setup a record ran, or PeftcalcError with why peftcalc cannot model it."""
    _refuse_unmodelled(record)
    source = record["id"].split("/")[0]  # ids are namespaced by their source
    spec, gpu = _spec(record), _gpu(record)
    base = dict(id=record["id"], source=record.get("_file", source), spec=spec, gpu=gpu, metric=record["metric"],
                published=float(record["value"]), method=METHODS[record["method"]["name"]])
    if source == "torchtune":
        return _torchtune(record, base)
    if source == "torchtitan":
        return _torchtitan(record, base)
    if source == "peft-metamathqa":
        return _metamathqa(record, base)
    raise PeftcalcError(f"no mapping for {source} records")


def _refuse_unmodelled(record: Mapping[str, Any]) -> None:
    precision_text = str(record.get("precision") or "")
    if "float8" in precision_text.replace("no float8", ""):
        raise PeftcalcError("float8 matmuls: the catalogue has no FP8 peak")
    if ((record.get("parallelism") or {}).get("cp") or 1) > 1:
        raise PeftcalcError("context parallelism is not modelled")
    if record["method"]["name"] not in METHODS:
        raise PeftcalcError(f"method {record['method']['name']!r} is not modelled by peftcalc")
    if record["metric"] == "train_seconds_total":
        raise PeftcalcError("tokens of the run not stated (a run time with unstated sample lengths)")
    if record["metric"] not in METRICS:
        raise PeftcalcError(f"metric {record['metric']!r}: peftcalc predicts time and tokens/s, not utilisation")
    if not record.get("seq_len"):
        raise PeftcalcError("sequence length not stated")


def _spec(record: Mapping[str, Any]) -> ModelSpec:
    from peftcalc.model.catalogue import get_model
    from peftcalc.model.hf_config import spec_from_config

    hf = ((record.get("model") or {}).get("hf_id") or "").removesuffix("-Instruct")  # same architecture
    if hf in CATALOGUE_MODELS:
        return get_model(CATALOGUE_MODELS[hf])
    if hf in EXTRA_MODELS:
        cfg, source = EXTRA_MODELS[hf]
        return spec_from_config(cfg, hf.split("/")[-1].lower(), source)
    raise PeftcalcError(f"model {hf or record['model'].get('name')!r} is not in the catalogue")


def _gpu(record: Mapping[str, Any]) -> Gpu:
    name = record.get("gpu_model") or ""
    for key, gid in GPUS:
        if key in name:
            return get_gpu(gid)
    raise PeftcalcError(f"GPU {name!r} is not in the catalogue")


def _parallel(record: Mapping[str, Any]) -> dict[str, Any]:
    par = record.get("parallelism") or {}
    dp, tp, pp = par.get("dp") or record.get("gpus") or 1, par.get("tp") or 1, par.get("pp") or 1
    zero = 3 if dp > 1 and (par.get("fsdp") or (par.get("zero") or 0) >= 3) else 0
    out = dict(num_gpus=dp, zero_stage=zero, tensor_parallel=tp, pipeline_parallel=pp, sequence_parallel=tp > 1)
    if pp > 1:
        out["gradient_accumulation"] = max(record.get("gradient_accumulation_steps") or 1, 4 * pp)
    return out


def _torchtune(record: Mapping[str, Any], base: dict[str, Any]) -> Case:
    method, compiled = base["method"], bool(record.get("compile"))
    common = dict(precision="bf16-true", batch_size=record["batch_size"], seq_len=record["seq_len"], compile=compiled,
                  grad_clipping=False, kbit_preparation=False, **_parallel(record))  # torchao NF4, no peft preparation
    row = (record["method"].get("config") or {}).get("cumulative_techniques_up_to")
    if row is None:  # the Llama 3.1 table: the configs at 30b8519e
        size = record["id"].split("/")[-1].split("-")[0]
        targets, rank, optimizer, impl, offload = TORCHTUNE_31[(size, method)]
        setup = Setup(**common, gradient_checkpointing=True, packing=True, loss="chunked", optimizer=optimizer,
                      adamw_impl=impl, offload=offload, offload_params=offload)
        notes = [f"config: llama3_1 {size} defaults at 30b8519e (checkpointing, chunked CE, "
                 + (f"{optimizer}" if method == "full" else f"rank {rank} on {', '.join(targets)}, fused AdamW")
                 + (", FSDP CPU offload" if offload else "") + ")"]
    else:
        targets, rank, setup, notes = _optflags(row, method, common)
    options = MethodOptions(rank=rank, targets=targets or None)
    return Case(**base, options=options, setup=setup, steps=None, assumptions=tuple(notes))


def _optflags(row: str, method: str, common: dict[str, Any]) -> tuple[tuple[str, ...], int, Setup, list[str]]:
    """A row of the Llama 3.2 3B optimisation-flags table: the techniques up to it (LoRA/QLoRA: all but the
    optimizer's)."""
    if row == "baseline":
        raise PeftcalcError("rows padded to the longest of the batch: the dataset's sample lengths are not stated")
    upto = OPTFLAGS.index(row) if row in OPTFLAGS else len(OPTFLAGS)
    has = lambda t: OPTFLAGS.index(t) <= upto  # noqa: E731
    peft = method in ("lora", "qlora")
    setup = Setup(**common, packing=has("packed"), loss="chunked" if has("chunked-ce") else "standard",
                  gradient_checkpointing=has("act-ckpt"),
                  optimizer="adamw-8bit" if has("adamw8bit") and not peft else "adamw",
                  adamw_impl="fused" if peft else "foreach")
    targets = ("q_proj", "v_proj", "o_proj") + MLP if peft else ()
    notes = [f"techniques up to '{row}' (torchtune README at f67ccda9)"]
    if peft:
        notes.append("llama3_2/3B_(q)lora_single_device.yaml: rank 64 on q, v, o and the MLP, fused AdamW")
    if has("act-offload"):
        notes.append("activation offloading taken as hidden")
    return targets, 64 if peft else 8, setup, notes


def _torchtitan(record: Mapping[str, Any], base: dict[str, Any]) -> Case:
    ckpt = str(record.get("gradient_checkpointing") or "")
    if not ckpt.startswith("selective"):
        raise PeftcalcError(f"activation checkpointing {ckpt!r}: only torchtitan's op-level policy is mapped")
    setup = Setup(precision="bf16-mixed", batch_size=record["batch_size"], seq_len=record["seq_len"],
                  compile=bool(record.get("compile")), **_parallel(record))
    gpu = replace(base.pop("gpu"), memory_bandwidth_bytes_per_s=TITAN_BANDWIDTH)
    notes = ("pre-training; H100 96GB HBM2e at 2.4 TB/s, capped at 500 W (compute clocks x(500/700)^(1/3))",
             "op-level selective checkpointing: k, o, up projections and every pointwise operator recomputed")
    return Case(**base, gpu=gpu, options=MethodOptions(), setup=setup, steps=None, assumptions=notes,
                power_watts=TITAN_POWER_WATTS, recomputed=TITAN_RECOMPUTED)


def _metamathqa(record: Mapping[str, Any], base: dict[str, Any]) -> Case:
    detail = record.get("metric_detail") or ""
    tokens = re.search(r"total tokens'?: (\d+)", detail)
    samples = re.search(r"\((\d+) samples", detail)
    steps = re.search(r"(\d+) steps of batch", detail)
    if not (tokens and samples and steps):
        raise PeftcalcError("tokens of the run not stated")
    seq = round(int(tokens.group(1)) / int(samples.group(1)))
    config = record["method"].get("config") or {}
    targets = config.get("target_modules")
    options = MethodOptions(rank=config.get("r") or 8, targets=tuple(sorted(targets)) if targets else None,
                            virtual_tokens=config.get("num_virtual_tokens") or 20)
    setup = Setup(precision="bf16", batch_size=record["batch_size"], seq_len=seq, padded=True)
    notes = (f"mean unpadded length {seq} tokens (padding to the longest row of each length-bucketed batch not "
             "counted)",)
    return Case(**base, options=options, setup=setup, steps=int(steps.group(1)), assumptions=notes)
