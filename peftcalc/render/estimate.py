"""An estimate as a terminal table, JSON and CSV, with the assumptions it rests on."""

from __future__ import annotations

import json
from typing import Any, Mapping

from peftcalc.estimate import Estimate, MethodEstimate
from peftcalc.methods import RANKED
from peftcalc.precision import get_precision
from peftcalc.render.text import fmt_bytes, fmt_count, fmt_percent, table, to_csv
from peftcalc.uncertainty import Uncertainty
from peftcalc.units import Unit

Bands = Mapping[str, "Uncertainty | None"]  # method -> its peak's band (peftcalc.uncertainty.bands)


def _estimate_rows(est: Estimate, unit: Unit, bands: Bands) -> list[tuple[str, list[str]]]:
    rs = est.results
    b = lambda f: [fmt_bytes(f(r), unit) for r in rs]  # noqa: E731
    n = est.results[0].checkpoint.num_tasks
    rows = [
        ("trainable params", [fmt_count(r.params.trainable) for r in rs]),
        ("trainable %", [fmt_percent(r.params.percent) for r in rs]),
        ("total params", [fmt_count(r.params.total) for r in rs]),
        ("weights", b(lambda r: r.memory.weight_bytes)),
        ("gradients", b(lambda r: r.memory.gradient_bytes)),
        ("optimizer states", b(lambda r: r.memory.optimizer_state_bytes)),
        ("master weights", b(lambda r: r.memory.master_weight_bytes)),
        ("= model states (exact)", b(lambda r: r.memory.model_state_bytes)),
        ("activations (after forward)", b(lambda r: r.memory.activation_bytes)),
        ("optimizer temporaries", b(lambda r: r.memory.temporary_bytes)),
        ("peak of tensors", b(lambda r: r.memory.peak_bytes)),
        ("  in phase", [r.memory.peak_phase for r in rs]),
        ("overhead (CUDA, stated)", b(lambda r: r.memory.overhead_bytes)),
        ("total per GPU (peak)", b(lambda r: r.memory.total)),
        ("peak uncertainty", [_band(bands.get(r.method)) for r in rs]),
    ]
    if est.setup.offload:
        rows.append(("CPU memory (offload)", b(lambda r: r.memory.cpu_bytes)))
    rows += [
        ("checkpoint per task", b(lambda r: r.checkpoint.checkpoint_bytes)),
        (f"{n} tasks", b(lambda r: r.checkpoint.tasks_bytes)),
        (f"vs {n} full copies", b(lambda r: r.checkpoint.full_copies_bytes)),
    ]
    return rows


def _band(u: Uncertainty | None) -> str:
    return "-" if u is None else u.short()


REPLAYED = ("replayed: the transformers + peft step of this family, operator by operator, as it runs on the CPU "
            "(peftcalc/stepsim; checked against traced steps by `peftcalc validate`)")
PROFILED = ("a traced profile: the real transformers + peft step traced on fake tensors at a few small layer counts "
            "and sizes, fitted exactly as polynomials in batch and sequence and extrapolated over the layers "
            "(peftcalc/profile)")


def activations_assumption(est: Estimate) -> str:
    """Which activation model each method's numbers come from: the replay, or a traced profile (and its source)."""
    profiled = {r.activations.source: [] for r in est.results if r.activations.source.startswith("traced")}
    for r in est.results:
        if r.activations.source in profiled:
            profiled[r.activations.source].append(r.method)
    replayed = [r.method for r in est.results if not r.activations.source.startswith("traced")]
    parts = []
    if replayed:
        parts.append(REPLAYED + ("" if not profiled else f" for {', '.join(replayed)}"))
    for source, methods in profiled.items():
        parts.append(f"{PROFILED} for {', '.join(methods)}: {source.removeprefix('traced profile ').strip('()')}")
    return "; ".join(parts) + "; the peak is the largest of the forward, backward and optimizer phases"


def assumptions(est: Estimate) -> dict[str, Any]:
    s, a, p = est.setup, est.spec.arch, get_precision(est.setup.precision)
    shape = (f"hidden {a.hidden_size}, {a.num_layers} layers, {a.num_heads} heads ({a.num_kv_heads} kv), "
             f"head dim {a.head_dim}, FFN {a.ffn_size}{' gated' if a.gated_mlp else ''}, vocab {a.vocab_size}"
             + (f", {a.num_experts} experts (top {a.experts_per_token})" if a.num_experts else ""))
    out = {
        "model": f"{est.spec.name} ({a.family}, {a.kind}) from {est.spec.source}",
        "shape": shape,
        "precision": f"{p.name}: {p.description}; adapters in {p.adapter_dtype}",
        "optimizer": f"{s.optimizer}, AdamW implementation {s.adamw_impl}",
        "batch x sequence": f"{s.batch_size} x {s.seq_len} tokens per GPU",
        "attention kernel": s.attention,
        "gradient checkpointing": "on" if s.gradient_checkpointing else "off",
        "parallelism": f"{s.num_gpus} GPU(s), ZeRO stage {s.zero_stage}" + (", optimizer offloaded to CPU" if s.offload else ""),
        "activations": activations_assumption(est),
        "overhead": ("; ".join(f"{l.name} {l.bytes / 2**20:,.0f} MiB: {l.source}" for l in est.results[0].memory.overhead)
                     or "none (--overhead none)") if est.results else
                    "CUDA context, cuBLAS workspace, allocator rounding and fragmentation: stated defaults (peftcalc/overhead.py)",
        "device": ("tensors as the step allocates them on the CPU, where it was traced; on CUDA dropout keeps 1-byte "
                   "masks and sdpa's fused kernels replace the CPU's math path (GPT-2/T5/BERT attention dropout or bias), "
                   "so a GPU holds less there"),
        "uncertainty": "the largest |error| of the analytic peak against traced steps of the same kind (method, "
                       "checkpointing) in the committed validation history",
        "checkpoints": "safetensors files: adapter weights in fp32 (peft's default), full copies in the weight dtype",
    }
    if est.spec.is_inferred:
        out["inferred shape"] = (f"total held at exactly {est.spec.total_params:,}; the shape itself has "
                                 f"{est.spec.shape_params:,} ({est.spec.source}); override with --hidden/--layers/...")
    return out


def estimate_text(est: Estimate, unit: Unit, bands: Bands | None = None) -> str:
    rows = _estimate_rows(est, unit, bands or {})
    out = [table(["", *[r.method for r in est.results]], [(k, *v) for k, v in rows])]
    out.append("")
    out.append("Assumptions")
    out += [f"  {k}: {v}" for k, v in assumptions(est).items()]
    h, r = est.spec.arch.hidden_size, est.options.rank
    if any(x.method in RANKED for x in est.results) and r <= h:
        full, low = h * h, r * (h + h)
        out.append(f"  per matrix: a {h}x{h} matrix has {full:,} parameters; LoRA r={r} trains r(m+n) = {low:,}, "
                   f"{full / low:,.0f}x fewer")
    notes = [f"  {x.method}: {note}" for x in est.results for note in x.notes]
    if notes:
        out += ["", "Notes", *notes]
    out.append(f"  ({unit.value} = {unit.bytes:,} bytes)")
    return "\n".join(out)


def estimate_dict(est: Estimate, bands: Bands | None = None) -> dict[str, Any]:
    """The JSON contract: integers for bytes and parameter counts."""
    a, s = est.spec.arch, est.setup
    return {
        "model": {"name": est.spec.name, "family": a.family, "total_params": est.spec.total_params,
                  "hidden_size": a.hidden_size, "num_layers": a.num_layers, "vocab_size": a.vocab_size,
                  "inferred": est.spec.is_inferred, "source": est.spec.source},
        "setup": {"precision": s.precision, "optimizer": s.optimizer, "batch_size": s.batch_size,
                  "seq_len": s.seq_len, "gradient_checkpointing": s.gradient_checkpointing,
                  "attention": s.attention, "num_gpus": s.num_gpus, "zero_stage": s.zero_stage,
                  "offload": s.offload, "adamw_impl": s.adamw_impl},
        "results": [_method_dict(r, (bands or {}).get(r.method)) for r in est.results],
        "assumptions": assumptions(est),
    }


def _method_dict(r: MethodEstimate, band: Uncertainty | None) -> dict[str, Any]:
    m = r.memory
    return {
        "method": r.method,
        "trainable_params": r.params.trainable,
        "trainable_percent": r.params.percent,
        "total_params": r.params.total,
        "memory_bytes": {"weights": m.weight_bytes, "gradients": m.gradient_bytes,
                         "optimizer_states": m.optimizer_state_bytes, "master_weights": m.master_weight_bytes,
                         "activations": m.activation_bytes, "temporaries": m.temporary_bytes,
                         "overhead": m.overhead_bytes, "total": m.total, "buffers": m.buffer_bytes,
                         "inputs": m.input_bytes, "peak": m.peak_bytes, "forward_peak": m.forward_peak_bytes,
                         "backward_peak": m.backward_peak_bytes, "optimizer_peak": m.optimizer_peak_bytes},
        "peak_phase": m.peak_phase,
        "overhead_lines": [{"name": l.name, "bytes": l.bytes, "source": l.source} for l in m.overhead],
        "uncertainty": band.to_dict() if band else None,
        "cpu_bytes": m.cpu_bytes,
        "checkpoint_bytes": r.checkpoint.checkpoint_bytes,
        "tasks_bytes": r.checkpoint.tasks_bytes,
        "full_copies_bytes": r.checkpoint.full_copies_bytes,
        "notes": list(r.notes),
    }


def estimate_json(est: Estimate, bands: Bands | None = None) -> str:
    return json.dumps(estimate_dict(est, bands), indent=2)


def estimate_csv(est: Estimate) -> str:
    header = ["method", "trainable_params", "trainable_percent", "total_params", "weights_bytes", "gradients_bytes",
              "optimizer_states_bytes", "master_weights_bytes", "activations_bytes", "temporaries_bytes",
              "overhead_bytes", "total_bytes", "cpu_bytes", "checkpoint_bytes"]
    rows = [[r.method, r.params.trainable, f"{r.params.percent:.6g}", r.params.total, r.memory.weight_bytes,
             r.memory.gradient_bytes, r.memory.optimizer_state_bytes, r.memory.master_weight_bytes,
             r.memory.activation_bytes, r.memory.temporary_bytes, r.memory.overhead_bytes, r.memory.total,
             r.memory.cpu_bytes, r.checkpoint.checkpoint_bytes] for r in est.results]
    return to_csv(header, rows)
