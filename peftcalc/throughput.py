"""Time checked against published throughput: each record of bench/published/throughput/ predicted with the step-time
model (hardware/steptime.py) and compared with the metric its source printed.

A record becomes a prediction when peftcalc can model what it ran: its model in the catalogue (or a config below,
with its source), its method, its GPU in the catalogue, its tokens per step. Records it cannot model are listed
with the reason, never dropped silently: float8 matmuls (no FP8 peak in the catalogue), context parallelism, PEFT
methods peftcalc lacks, a sequence length the source does not give, a model it does not know.

Mapping ASSUMPTIONS, stated per record in the output:
- GPU: the source's GPU to the closest catalogue entry (torchtitan's 500 W, 96 GB HBM2e H100 as h100-80gb);
- precision: "bf16 params, fp32 reduce" (FSDP2 mixed precision) as bf16-mixed; torchtune's default as bf16;
- checkpointing: "full" as gradient checkpointing, "selective" as none (it recomputes a few cheap operators);
- peft MetaMathQA: 5000 steps of batch 4 at the mean unpadded length (the source's token count / 20000 samples);
  padding inside length buckets is not known and not counted.

The error is that of the predicted TIME: (predicted time / published time - 1) x 100; for tokens/s it is
published / predicted - 1. MFU defaults (hardware/mfu.py) are assumptions, not fitted to these records.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from peftcalc.compute import training_flops_per_seq
from peftcalc.errors import PeftcalcError
from peftcalc.estimate import adapt
from peftcalc.hardware.catalogue import Gpu, get_gpu
from peftcalc.hardware.mfu import default_mfu
from peftcalc.hardware.nodes import node_for
from peftcalc.hardware.steptime import step_time
from peftcalc.methods import make_method, MethodOptions
from peftcalc.model.spec import ModelSpec
from peftcalc.precision import get_precision
from peftcalc.setup import Setup

THROUGHPUT_DIR = Path(__file__).resolve().parents[1] / "bench" / "published" / "throughput"

# Models of the records that the catalogue lacks, from a public transcription of their config.json.
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
    metric: str  # "tokens_per_second_per_gpu" or "train_seconds_total"
    published: float
    tokens: int | None  # train_seconds_total: the run's data tokens
    assumptions: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    id: str
    source: str
    metric: str
    published: float
    predicted: float | None
    error_percent: float | None  # of the predicted time
    excluded: str | None  # why no prediction
    note: str = ""


def load_records(folder: Path = THROUGHPUT_DIR) -> list[dict[str, Any]]:
    files = sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else [Path(folder)]
    if not files:
        raise PeftcalcError(f"no published throughput records (*.jsonl) in {folder}")
    out = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append({**json.loads(line), "_file": f.stem})
                except json.JSONDecodeError as e:
                    raise PeftcalcError(f"{f}:{n}: not valid JSON: {e.msg}") from None
    return out


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


def case_of(record: Mapping[str, Any]) -> Case:
    """The setup a record ran, or PeftcalcError with why peftcalc cannot model it."""
    precision_text = str(record.get("precision") or "")
    if "float8" in precision_text.replace("no float8", ""):
        raise PeftcalcError("float8 matmuls: the catalogue has no FP8 peak")
    par = record.get("parallelism") or {}
    if (par.get("cp") or 1) > 1:
        raise PeftcalcError("context parallelism is not modelled")
    method = METHODS.get(record["method"]["name"])
    if method is None:
        raise PeftcalcError(f"method {record['method']['name']!r} is not modelled by peftcalc")
    metric = record["metric"]
    if metric not in ("tokens_per_second_per_gpu", "train_seconds_total"):
        raise PeftcalcError(f"metric {metric!r}: peftcalc predicts time and tokens/s, and assumes MFU")
    spec, gpu = _spec(record), _gpu(record)
    notes: list[str] = []
    precision = "bf16-mixed" if "fp32 reduce" in precision_text else "bf16"
    ckpt = str(record.get("gradient_checkpointing") or "")
    seq, tokens = record.get("seq_len"), None
    batch = record.get("batch_size") or 1
    if metric == "train_seconds_total":
        m = re.search(r"total tokens'?: (\d+)", record.get("metric_detail") or "")
        samples = re.search(r"\((\d+) samples", record.get("metric_detail") or "")
        if not m or not samples:
            raise PeftcalcError("tokens of the run not stated")
        tokens = int(m.group(1))
        seq = round(tokens / int(samples.group(1)))
        notes.append(f"mean unpadded length {seq} tokens (padding not counted)")
    if not seq:
        raise PeftcalcError("sequence length not stated")
    dp, tp, pp = par.get("dp") or record.get("gpus") or 1, par.get("tp") or 1, par.get("pp") or 1
    zero = 3 if par.get("fsdp") or (par.get("zero") or 0) >= 3 else (0 if dp == 1 else 0)
    setup = Setup(precision=precision, batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt.startswith("full"),
                  num_gpus=dp, zero_stage=zero if dp > 1 else 0, tensor_parallel=tp, pipeline_parallel=pp,
                  sequence_parallel=tp > 1, gradient_accumulation=max(1, record.get("gradient_accumulation_steps") or 1))
    if pp > 1:
        setup = replace(setup, gradient_accumulation=max(setup.gradient_accumulation, 4 * pp))
    if "H100 SXM 96GB" in (record.get("gpu_model") or ""):
        notes.append("500 W, 96 GB HBM2e H100 timed as h100-80gb (700 W)")
    if record.get("compile"):
        notes.append("torch.compile not modelled")
    if "offload" in ckpt:
        notes.append("activation offloading not modelled")
    return Case(record["id"], record["_file"], spec, method, MethodOptions(), setup, gpu, metric,
                float(record["value"]), tokens, tuple(notes))


def predict(case: Case) -> float:
    """The record's metric as peftcalc predicts it (tokens/s per GPU, or seconds for the run)."""
    adaptation = adapt(case.spec, make_method(case.method, case.options))
    flops = training_flops_per_seq(adaptation, case.setup.seq_len, case.setup.gradient_checkpointing)
    dtype = get_precision(case.setup.precision).compute_dtype
    mfu = default_mfu(case.gpu, adaptation.quantized_base).value
    step = step_time(adaptation, case.setup, node_for(case.gpu), flops, case.gpu.flops_per_s(dtype), mfu,
                     case.gpu.memory_bandwidth_bytes_per_s)
    per_gpu = step.tokens_per_step / step.step_seconds / case.setup.gpus
    if case.metric == "tokens_per_second_per_gpu":
        return per_gpu
    return case.tokens / (per_gpu * case.setup.gpus)


def implied_utilisation(case: Case, tokens_per_second_per_gpu: float) -> float:
    """The share of the GPU's dense peak a per-GPU token rate needs (model FLOPs per token; PaLM appendix B)."""
    adaptation = adapt(case.spec, make_method(case.method, case.options))
    flops = training_flops_per_seq(adaptation, case.setup.seq_len, case.setup.gradient_checkpointing)
    dtype = get_precision(case.setup.precision).compute_dtype
    per_gpu_flops = flops.flops_per_token * tokens_per_second_per_gpu / (case.setup.tensor_parallel
                                                                         * case.setup.pipeline_parallel or 1)
    return per_gpu_flops * case.setup.tensor_parallel * case.setup.pipeline_parallel / case.gpu.flops_per_s(dtype)


def compare(record: Mapping[str, Any]) -> Comparison:
    base = dict(id=record["id"], source=record["_file"], metric=record["metric"], published=float(record["value"]))
    try:
        case = case_of(record)
        predicted = predict(case)
    except PeftcalcError as e:
        return Comparison(**base, predicted=None, error_percent=None, excluded=str(e))
    if case.metric == "tokens_per_second_per_gpu":
        implied = implied_utilisation(case, case.published)
        if implied > 1:
            return Comparison(**base, predicted=predicted, error_percent=None,
                              excluded=f"the published figure implies {implied:.0%} of the GPU's dense peak: not "
                                       "a per-GPU rate (the record's own reading of the table)")
        error = 100.0 * (case.published / predicted - 1)
    else:
        error = 100.0 * (predicted / case.published - 1)
    return Comparison(**base, predicted=predicted, error_percent=error, excluded=None, note="; ".join(case.assumptions))


@dataclass(frozen=True)
class Summary:
    points: int
    excluded: int
    median_abs_percent: float | None
    mean_abs_percent: float | None
    by_source: dict[str, float]  # median |error| per source
    worst: tuple[Comparison, ...]


def summarize(comparisons: list[Comparison], worst: int = 5) -> Summary:
    done = [c for c in comparisons if c.error_percent is not None]
    errors = [abs(c.error_percent) for c in done]  # type: ignore[arg-type]
    sources = sorted({c.source for c in done})
    by_source = {s: statistics.median(abs(c.error_percent) for c in done if c.source == s)  # type: ignore[arg-type]
                 for s in sources}
    ordered = sorted(done, key=lambda c: -abs(c.error_percent))  # type: ignore[arg-type]
    return Summary(len(done), len(comparisons) - len(done), statistics.median(errors) if errors else None,
                   statistics.fmean(errors) if errors else None, by_source, tuple(ordered[:worst]))
