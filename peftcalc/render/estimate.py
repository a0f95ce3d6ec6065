"""An estimate as a terminal table, JSON and CSV, with the assumptions it rests on."""

from __future__ import annotations

import json
from typing import Any, Mapping

from peftcalc.estimate import Estimate, MethodEstimate
from peftcalc.methods import RANKED
from peftcalc.recipes import recipe_lines
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
        ("allocated peak", b(lambda r: r.memory.allocated_bytes)),
        ("reserved", b(lambda r: r.memory.reserved_bytes)),
        ("device total (context incl.)", b(lambda r: r.memory.total)),
        ("uncertainty", [_band(bands.get(r.method)) for r in rs]),
    ]
    if est.setup.offload or est.setup.offload_params:
        per_node = node_gpus(est.setup)
        rows.append(("CPU memory per GPU (offload)", b(lambda r: r.memory.cpu_bytes)))
        rows.append((f"CPU memory per node ({per_node} GPUs)", b(lambda r: r.memory.cpu_bytes * per_node)))
    rows += [
        ("checkpoint per task", b(lambda r: r.checkpoint.checkpoint_bytes)),
        (f"{n} tasks", b(lambda r: r.checkpoint.tasks_bytes)),
        (f"vs {n} full copies", b(lambda r: r.checkpoint.full_copies_bytes)),
    ]
    return rows


def _band(u: Uncertainty | None) -> str:
    return "-" if u is None else u.short()


REPLAYED = ("replayed: the transformers + peft step of this family, operator by operator, with the GPU's kernels "
            "(peftcalc/stepsim; the CPU paths are checked against traced steps by `peftcalc validate`, the GPU numbers "
            "against published runs by `peftcalc validate --published`)")
PROFILED = ("traced profiles: the real transformers + peft step traced on fake tensors with the CPU's kernels at a few "
            "small layer counts and sizes, fitted exactly as polynomials in batch and sequence and extrapolated over "
            "the layers (peftcalc/profile; a GPU's fused attention keeps what the CPU's flash kernel keeps, its dropout "
            "1-byte masks where the CPU keeps noise tensors)")


def activations_assumption(est: Estimate) -> str:
    """Which activation model each method's numbers come from: the replay, or a traced profile (and its source)."""
    profiled: dict[str, list[str]] = {}
    replayed = []
    for r in est.results:
        source = r.activations.source
        if source.startswith("traced"):
            profiled.setdefault(source.removeprefix("traced profile").strip(" ()"), []).append(r.method)
        else:
            replayed.append(r.method)
    return activations_line(replayed, profiled) + "; the peak is the largest of the forward, backward and optimizer phases"


def activations_line(replayed: list[str], profiled: dict[str, list[str]]) -> str:
    """The replay for the `replayed` methods, traced profiles for the `profiled` ones, by the profile's source ("":
    not traced yet, as when a plan names the path before it estimates)."""
    parts = []
    if replayed:
        parts.append(REPLAYED + ("" if not profiled else f" for {', '.join(replayed)}"))
    if profiled:
        parts.append(PROFILED + ": " + "; ".join(", ".join(m) + (f": {src}" if src else "")
                                                 for src, m in profiled.items()))
    return "; ".join(parts)


def assumptions(est: Estimate, files: Any = None) -> dict[str, Any]:
    s, a, p = est.setup, est.spec.arch, est.setup.recipe
    shape = (f"hidden {a.hidden_size}, {a.num_layers} layers, {a.num_heads} heads ({a.num_kv_heads} kv), "
             f"head dim {a.head_dim}, FFN {a.ffn_size}{' gated' if a.gated_mlp else ''}, vocab {a.vocab_size}"
             + (f", {a.num_experts} experts (top {a.experts_per_token})" if a.num_experts else ""))
    out = {
        "model": f"{est.spec.name} ({a.family}, {a.kind}) from {est.spec.source}",
        "shape": shape,
        "precision": f"{p.name}: {p.description}; adapters in {p.adapter_dtype}",
        "optimizer": f"{s.optimizer}, AdamW implementation {s.adamw_impl}",
        "batch x sequence": f"{s.batch_size} x {s.seq_len} tokens per GPU" + (
            f", {s.gradient_accumulation} micro-batches per optimizer step (their gradients kept between them)"
            if s.gradient_accumulation > 1 else ""),
        **recipe_lines(s),
        "parallelism": parallelism(s)
        + (f"; x {s.tensor_parallel} tensor x {s.pipeline_parallel} pipeline parallel = {s.gpus} GPUs: one GPU holds one "
           "stage's tensor shard (Megatron layout: heads, MLP width and vocabulary / tp, ceil(layers / pp) blocks, "
           "every stage given the embedding and the head, an upper bound), 1F1B keeps pp micro-batches in flight on "
           "the first stage (Narayanan et al. 2021)"
           + (", sequence parallel: activations / tp (Korthikanti et al. 2022)" if s.sequence_parallel else "")
           + " (peftcalc/parallel.py)" if s.tensor_parallel > 1 or s.pipeline_parallel > 1 else ""),
        "activations": activations_assumption(est),
        "quantities": ("allocated peak = tensors + cuBLAS workspace + 512-byte rounding (torch.cuda."
                       "max_memory_allocated); reserved = allocated + segment tails + fragmentation "
                       "(max_memory_reserved, what an out-of-memory error inside PyTorch is about); device total = "
                       "reserved + CUDA context (nvidia-smi; what must fit in the GPU)"),
        "overhead": ("; ".join(f"{l.name} {l.bytes / 2**20:,.0f} MiB: {l.source}" for l in est.results[0].memory.overhead)
                     or "none (--overhead none)") if est.results else
                    "CUDA context, cuBLAS workspace, allocator rounding and fragmentation: stated defaults (peftcalc/overhead.py)",
        "device": ("a CUDA GPU: fused attention kernels, 1-byte dropout masks (the CPU's math paths and noise "
                   "tensors are what `peftcalc validate` checks against traced steps)"),
        "uncertainty": ("from published GPU runs of the same kind (method, quantization, framework) where there are "
                        "any: the 90th percentile of |error| of the quantity each measured; else CPU traces only "
                        "(peftcalc/uncertainty.py)"),
        "checkpoints": f"safetensors files: adapter weights in {p.adapter_dtype} (peft's default fp32 unless "
                       "--adapter-dtype), modules_to_save copies and full copies in the weight dtype",
    }
    if est.spec.derivation is not None:
        d = est.spec.derivation
        out["inventory"] = (f"derived: transformers {d.transformers_version} built {d.model_class} from the config on "
                            "the meta device (every weight, buffer and dtype as it builds them)"
                            + "".join(f"; {n}" for n in d.notes))
    if files is not None:
        from peftcalc.render.from_files import not_modelled_summary

        summary = not_modelled_summary(files)
        out["from files"] = f"{', '.join(files.paths)}" + (f"; {summary}" if summary else "; every field read is "
                                                           "modelled or has no effect")
    if est.spec.is_inferred:
        out["inferred shape"] = (f"total held at exactly {est.spec.total_params:,}; the shape itself has "
                                 f"{est.spec.shape_params:,} ({est.spec.source}); override with --hidden/--layers/...")
    return out


def estimate_text(est: Estimate, unit: Unit, bands: Bands | None = None, files: Any = None) -> str:
    rows = _estimate_rows(est, unit, bands or {})
    out = [table(["", *[r.method for r in est.results]], [(k, *v) for k, v in rows])]
    out.append("")
    out.append("Assumptions")
    out += [f"  {k}: {v}" for k, v in assumptions(est, files).items()]
    h, r = est.spec.arch.hidden_size, est.options.rank
    if any(x.method in RANKED for x in est.results) and r <= h:
        full, low = h * h, r * (h + h)
        out.append(f"  per matrix: a {h}x{h} matrix has {full:,} parameters; LoRA r={r} trains r(m+n) = {low:,}, "
                   f"{full / low:,.0f}x fewer")
    notes = [f"  {x.method}: {note}" for x in est.results for note in x.notes]
    notes += [f"  {m}: not estimated: {why}" for m, why in est.not_estimated]
    if notes:
        out += ["", "Notes", *notes]
    out.append(f"  ({unit.value} = {unit.bytes:,} bytes)")
    if files is not None:
        from peftcalc.render.from_files import from_text

        out += ["", from_text(files)]
    return "\n".join(out)


def estimate_dict(est: Estimate, bands: Bands | None = None, files: Any = None) -> dict[str, Any]:
    """The JSON contract: integers for bytes and parameter counts; `from` when --from files were read."""
    a, s = est.spec.arch, est.setup
    return {
        "model": {"name": est.spec.name, "family": a.family, "total_params": est.spec.total_params,
                  "hidden_size": a.hidden_size, "num_layers": a.num_layers, "vocab_size": a.vocab_size,
                  "inferred": est.spec.is_inferred, "source": est.spec.source},
        "setup": {"precision": s.precision, "optimizer": s.optimizer, "batch_size": s.batch_size,
                  "seq_len": s.seq_len, "gradient_checkpointing": s.gradient_checkpointing,
                  "attention": s.attention, "num_gpus": s.num_gpus, "zero_stage": s.zero_stage,
                  "offload": s.offload, "offload_params": s.offload_params, "sharding": s.sharding_impl
                  if s.zero_stage else None, "adamw_impl": s.adamw_impl,
                  "gradient_accumulation": s.gradient_accumulation, "adapter_dtype": p_adapter(est)},
        "results": [_method_dict(r, (bands or {}).get(r.method), node_gpus(s)) for r in est.results],
        "not_estimated": dict(est.not_estimated),
        "assumptions": assumptions(est, files),
        **({"from": files.to_dict()} if files is not None else {}),
    }


def _method_dict(r: MethodEstimate, band: Uncertainty | None, per_node: int = 1) -> dict[str, Any]:
    m = r.memory
    return {
        "method": r.method,
        "trainable_params": r.params.trainable,
        "trainable_percent": r.params.percent,
        "total_params": r.params.total,
        # the three quantities users compare with: peak (torch.cuda.max_memory_allocated), reserved
        # (max_memory_reserved) and total (the device total, CUDA context included); tensor_peak is the tensors
        # alone (what the traced backend measures), overhead every line above it (total - tensor_peak)
        "memory_bytes": {"weights": m.weight_bytes, "gradients": m.gradient_bytes,
                         "optimizer_states": m.optimizer_state_bytes, "master_weights": m.master_weight_bytes,
                         "activations": m.activation_bytes, "temporaries": m.temporary_bytes,
                         "overhead": m.overhead_bytes, "total": m.total, "buffers": m.buffer_bytes,
                         "inputs": m.input_bytes, "peak": m.allocated_bytes, "reserved": m.reserved_bytes,
                         "tensor_peak": m.peak_bytes, "forward_peak": m.forward_peak_bytes,
                         "backward_peak": m.backward_peak_bytes, "optimizer_peak": m.optimizer_peak_bytes},
        "peak_phase": m.peak_phase,
        "overhead_lines": [{"name": l.name, "bytes": l.bytes, "level": l.level, "source": l.source}
                           for l in m.overhead],
        "uncertainty": band.to_dict() if band else None,
        "cpu_bytes": m.cpu_bytes,
        "cpu_bytes_per_node": m.cpu_bytes * per_node,
        "checkpoint_bytes": r.checkpoint.checkpoint_bytes,
        "tasks_bytes": r.checkpoint.tasks_bytes,
        "full_copies_bytes": r.checkpoint.full_copies_bytes,
        "notes": list(r.notes),
    }


SHARDING_WORDS = {"fsdp2": "FSDP2 (fully_shard)", "fsdp1": "FSDP1 (flat parameters)", "deepspeed": "DeepSpeed ZeRO"}


def parallelism(s: Any) -> str:
    """How the run is spread, in words (the assumptions line)."""
    out = f"{s.num_gpus} GPU(s), ZeRO stage {s.zero_stage}"
    if s.zero_stage and s.num_gpus > 1:
        out += f" by {SHARDING_WORDS[s.sharding_impl]}"
    if s.offload_params:
        out += ", weight shards" + (", gradient shards and optimizer" if s.offload else "") + " in CPU memory"
    elif s.offload:
        out += ", optimizer offloaded to CPU"
    if s.fp32_shards:
        out += ", trainable shards in fp32 (accelerate's upcast)"
    return out + (f"; host memory per node for {node_gpus(s)} GPUs" if s.offload or s.offload_params else "")


ASSUMED_GPUS_PER_NODE = 8  # the estimate names no server: an 8-GPU node (`peftcalc plan --node` prices a real one)


def node_gpus(setup: Any) -> int:
    """GPUs of one node sharing its host memory: the run's GPUs, up to an assumed 8-GPU node."""
    return min(setup.gpus, ASSUMED_GPUS_PER_NODE)


def p_adapter(est: Estimate) -> str:
    return est.setup.recipe.adapter_dtype


def estimate_json(est: Estimate, bands: Bands | None = None, files: Any = None) -> str:
    return json.dumps(estimate_dict(est, bands, files), indent=2)


def estimate_csv(est: Estimate) -> str:
    header = ["method", "trainable_params", "trainable_percent", "total_params", "weights_bytes", "gradients_bytes",
              "optimizer_states_bytes", "master_weights_bytes", "activations_bytes", "temporaries_bytes",
              "overhead_bytes", "total_bytes", "cpu_bytes", "checkpoint_bytes", "peak_bytes", "reserved_bytes"]
    rows = [[r.method, r.params.trainable, f"{r.params.percent:.6g}", r.params.total, r.memory.weight_bytes,
             r.memory.gradient_bytes, r.memory.optimizer_state_bytes, r.memory.master_weight_bytes,
             r.memory.activation_bytes, r.memory.temporary_bytes, r.memory.overhead_bytes, r.memory.total,
             r.memory.cpu_bytes, r.checkpoint.checkpoint_bytes, r.memory.allocated_bytes, r.memory.reserved_bytes]
            for r in est.results]
    return to_csv(header, rows)
