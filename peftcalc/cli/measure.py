"""`peftcalc measure`: trace or run the real training step, with the analytic prediction beside it.

torch, transformers and peft are imported only when the command runs, so the rest of the CLI stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

from peftcalc.cli.options import (METHOD_NAMES, method_options, model_options, output_options,
                                  resolve_method_options, resolve_setup, resolve_spec, resolve_unit, setup_options)
from peftcalc.errors import PeftcalcError
from peftcalc.methods import make_method
from peftcalc.render.text import fmt_bytes, fmt_count, table, to_csv
from peftcalc.units import Unit

LABELS = {"weights": "weights (+ master copies)", "gradients": "gradients", "optimizer_states": "optimizer states",
          "activations": "activations after forward", "peak": "peak (tensors)"}


@click.command("measure")
@model_options
@click.option("--method", type=click.Choice(METHOD_NAMES), required=True, help="The method to measure.")
@method_options
@setup_options
@click.option("--backend", type=click.Choice(["trace", "run"]), default="trace", show_default=True,
              help="trace: fake tensors, any size, any machine; run: real tensors on the CPU or a CUDA GPU.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes under torchrun (with --backend run): FSDP2 for --zero 2/3, DDP for --zero 0.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="With --backend run (default: cuda if present).")
@click.option("--timed-steps", type=int, default=2, show_default=True,
              help="With --backend run: extra steps timed after the measured one (0: time the measured step).")
@click.option("--no-save", is_flag=True, help="Do not save the checkpoint to measure its bytes on disk.")
@output_options
def measure_cmd(**kw: Any) -> None:
    """Trace or run one training step of the real transformers + peft model and compare it with the
    analytic estimate: weights, gradients, optimizer states, activations and the peak, per phase.

    \b
    Examples:
      peftcalc measure --model llama-2-7b --method lora --rank 8 --precision bf16 --seq 2048
      peftcalc measure --config ./config.json --method full --backend run
      peftcalc measure --config ./config.json --method full --backend run --nproc 2 --zero 3
      peftcalc measure --model mixtral-8x7b --method qlora --precision bf16 --json
    """
    unit = resolve_unit(kw)
    if kw["nproc"] < 1:
        raise PeftcalcError(f"--nproc must be a positive integer, got {kw['nproc']}")
    if kw["timed_steps"] < 0:
        raise PeftcalcError(f"--timed-steps must be 0 or more, got {kw['timed_steps']}")
    if kw["backend"] == "trace" and kw["device"] is not None:
        raise PeftcalcError("--device applies to --backend run (tracing always uses fake CPU tensors)")
    spec = resolve_spec(kw)
    method = make_method(kw["method"], resolve_method_options(kw))
    setup = resolve_setup(kw)
    if kw["device"] == "cuda":
        try:
            import torch
        except ImportError:
            raise PeftcalcError("--device cuda needs torch: pip install 'peftcalc[measure]'") from None

        if not torch.cuda.is_available():
            raise PeftcalcError("--device cuda: torch sees no CUDA GPU on this machine")
    try:
        from peftcalc.measure.api import measure
    except ImportError as e:
        raise PeftcalcError(f"peftcalc measure needs torch, transformers and peft ({e}): "
                            "pip install 'peftcalc[measure]'") from None
    result = measure(spec, method, setup, backend=kw["backend"], nproc=kw["nproc"], device=kw["device"],
                     save_checkpoint=not kw["no_save"], timed_steps=kw["timed_steps"])
    d = result.to_dict()
    if kw["as_json"]:
        click.echo(json.dumps(d, indent=2))
    elif kw["as_csv"]:
        click.echo(measure_csv(d), nl=False)
    else:
        click.echo(measure_text(d, unit))
    if result.status in ("unsupported", "error"):
        raise PeftcalcError(f"{result.status}: {result.detail.error}")


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:+.2f} %"


def measure_text(d: dict[str, Any], unit: Unit) -> str:
    s, m = d["setup"], d["model"]
    head = [f"{m['name']} ({m['family']}), {d['method']}: {d['backend']} on {d['device']} -> {d['status']}",
            f"  {s['precision']}, batch {s['batch_size']} x {s['seq_len']} tokens, attention {s['attention']}, "
            f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, AdamW {s['adamw_impl']}"
            + (f", {s['num_gpus']} processes ZeRO-{s['zero_stage']}" if s["num_gpus"] > 1 else "")]
    det = d["detail"]
    if d["status"] != "ok":
        head.append(f"  {det['error']}")
    meas, pred = d["measured_bytes"], d["predicted_bytes"]
    if meas or pred:
        rows = []
        for k, label in LABELS.items():
            mv = meas[k] if meas else None
            pv = pred[k] if pred else None
            diff = det["difference_bytes"][k] if det["difference_bytes"] else None
            pct = det["difference_percent"][k] if det["difference_percent"] else None
            rows.append([label, fmt_bytes(mv, unit) if mv is not None else "-",
                         fmt_bytes(pv, unit) if pv is not None else "-",
                         fmt_bytes(diff, unit) if diff is not None else "-", _pct(pct)])
        head += ["", table(["", "measured", "predicted", "predicted - measured", "%"], rows)]
    facts = []
    if d["peak_phase"]:
        peaks = ", ".join(f"{k} {fmt_bytes(v, unit)}" for k, v in det["phase_peaks"].items())
        facts.append(f"peak phase: {d['peak_phase']} ({peaks})")
    if d["trainable_params"] is not None:
        facts.append(f"trainable parameters: {fmt_count(d['trainable_params'])}")
    if det["master_weight_bytes"]:
        facts.append(f"fp32 master weights (in weights): {fmt_bytes(det['master_weight_bytes'], unit)}")
    if d["checkpoint_bytes"] is not None or det["predicted_checkpoint_bytes"] is not None:
        c, pc = d["checkpoint_bytes"], det["predicted_checkpoint_bytes"]
        facts.append(f"checkpoint: {fmt_bytes(c, unit) if c is not None else '-'} "
                     f"({'computed from the state dict' if d['backend'] == 'trace' else 'safetensors on disk'}); "
                     f"predicted {fmt_bytes(pc, unit) if pc is not None else '-'}")
    if d["step_seconds"]:
        facts.append(f"step time: {d['step_seconds']:.3f} s, {d['tokens_per_second']:,.0f} tokens/s")
    if det["cuda"]:
        c = det["cuda"]
        facts.append(f"CUDA: max allocated {fmt_bytes(c['max_allocated_bytes'], unit)}, max reserved "
                     f"{fmt_bytes(c['max_reserved_bytes'], unit)}, outside the allocator (context, libraries) "
                     f"{fmt_bytes(c['non_allocator_bytes'], unit)} of {fmt_bytes(c['total_bytes'], unit)}")
    if det.get("allocator"):
        a = det["allocator"]
        unseen = ", ".join(f"{k} {fmt_bytes(v, unit)}" for k, v in a["unseen_bytes"].items())
        bnb = [x for x in a["scratch"] if x["op"].startswith("bitsandbytes::")]
        top = (bnb or a["scratch"] or [None])[0]
        facts.append(f"at the CPU allocator, above the dispatch-level peaks: {unseen}" +
                     (f"; largest scratch inside one operator: {top['op']} {fmt_bytes(top['scratch_bytes'], unit)}"
                      if top else ""))
    if det["wall_seconds"] is not None:
        facts.append(f"wall time: {det['wall_seconds']:.1f} s")
    if facts:
        head += [""] + facts
    if d["per_rank"]:
        rows = [[str(r["rank"])] + [fmt_bytes(r["measured_bytes"][k], unit) for k in LABELS] for r in d["per_rank"]]
        head += ["", table(["rank", "weights", "gradients", "optimizer states", "activations", "peak"], rows)]
        head += collectives_text(d["per_rank"])
    if det["notes"]:
        head += ["", "Notes"] + [f"  {n}" for n in det["notes"]]
    head.append(f"  ({unit.value} = {unit.bytes:,} bytes; peaks count live tensor storage)")
    return "\n".join(head)


def collectives_text(per_rank: list[dict[str, Any]]) -> list[str]:
    """Each rank's collectives over one step, measured (the c10d calls) beside the analytic volume."""
    rows = []
    for r in per_rank:
        got, want = r.get("collective_bytes"), r.get("predicted_collective_bytes")
        if got is None:
            continue
        kinds = sorted(set(got["by_kind"]) | set((want or {}).get("by_kind", {})))
        for k in kinds:
            g = got["by_kind"].get(k, {"calls": 0, "payload_bytes": 0, "sent_bytes": 0})
            w = (want or {}).get("by_kind", {}).get(k)
            rows.append([str(r["rank"]), k, str(g["calls"]), f"{g['payload_bytes']:,}", f"{g['sent_bytes']:,}",
                         "-" if w is None else str(w["calls"]), "-" if w is None else f"{w['sent_bytes']:,}",
                         "-" if w is None else f"{g['sent_bytes'] - w['sent_bytes']:+,}"])
    if not rows:
        return []
    return ["", "Collectives per step (measured: the c10d calls of one step, bytes sent per rank under the ring "
                "algorithm; predicted: peftcalc/collectives.py)",
            table(["rank", "collective", "calls", "payload B", "sent B", "predicted calls", "predicted sent B",
                   "difference B"], rows)]


def measure_csv(d: dict[str, Any]) -> str:
    det = d["detail"]
    rows = []
    for k in LABELS:
        rows.append([k, (d["measured_bytes"] or {}).get(k), (d["predicted_bytes"] or {}).get(k),
                     (det["difference_bytes"] or {}).get(k), (det["difference_percent"] or {}).get(k)])
    for r in d["per_rank"]:
        for k in LABELS:
            rows.append([f"rank{r['rank']}.{k}", r["measured_bytes"][k], None, None, None])
    return to_csv(["quantity", "measured_bytes", "predicted_bytes", "difference_bytes", "difference_percent"], rows)
