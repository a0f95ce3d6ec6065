"""The analytic estimate against measured steps: relative errors per run, their summary, the history that
gives every estimate its uncertainty band. Pure: reads JSON lines, computes estimates; no torch.

A measured record is one line of bench/results/*.jsonl (`MeasureResult.to_dict()` plus the suite's "run"
keys), traced (fake tensors) or run (real tensors, CPU or GPU). Its setup is rebuilt from the record, the
estimate recomputed with the current code, and each quantity compared:

- peak: the most live tensor bytes of the step (measured) vs `MemoryBreakdown.peak_bytes`;
- weights (parameters, buffers and fp32 master copies), gradients, optimizer states: must agree to the byte;
- activations: live bytes after forward minus before it, vs `activation_bytes`.

Multi-process records compare each rank's bytes with the per-GPU estimate for that many GPUs and ZeRO stage.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from peftcalc.errors import PeftcalcError

COMPONENTS = ("peak", "weights", "gradients", "optimizer_states", "activations")
DEFAULT_TOLERANCE = 2.0  # percent: 95 % of runs must be within it
DEFAULT_MAX_TOLERANCE = 5.0  # percent: every run must be within it
DEFAULT_SHARE = 95.0  # percent of runs within the tolerance
HISTORY_FILE = Path(__file__).with_name("validation_history.json")


@dataclass(frozen=True)
class Comparison:
    """One measured run against the estimate for the same setup."""

    label: str
    source: str  # results file
    backend: str
    device: str
    family: str
    model: str
    method: str
    setup: dict[str, Any]
    measured: dict[str, int]
    predicted: dict[str, int]
    measured_phase: str | None
    predicted_phase: str | None
    rank: int | None = None  # for multi-process runs: the rank compared
    error: str | None = None  # why no prediction could be made

    def relative_error(self, key: str) -> float | None:
        """(predicted - measured) / measured in percent; None when nothing was measured."""
        m, p = self.measured.get(key), self.predicted.get(key)
        if m is None or p is None or m == 0:
            return None if m != 0 or p != 0 else 0.0
        return 100.0 * (p - m) / m

    def difference(self, key: str) -> int | None:
        m, p = self.measured.get(key), self.predicted.get(key)
        return None if m is None or p is None else p - m

    @property
    def kind(self) -> str:
        return setup_kind(self.method, bool(self.setup.get("gradient_checkpointing")))


def setup_kind(method: str, checkpointing: bool) -> str:
    """The groups the uncertainty band is kept by: method, and whether activations are checkpointed."""
    return f"{method}{' +ckpt' if checkpointing else ''}"


@dataclass(frozen=True)
class Summary:
    runs: int
    within: int  # runs with |peak error| <= tolerance
    median: float
    p90: float
    max: float
    tolerance: float
    max_tolerance: float
    share: float
    exact: dict[str, int] = field(default_factory=dict)  # per component: runs that agree to the byte

    @property
    def within_share(self) -> float:
        return 100.0 * self.within / self.runs if self.runs else 0.0

    @property
    def passed(self) -> bool:
        return self.runs > 0 and self.within_share >= self.share and self.max <= self.max_tolerance


# ---- reading records ----------------------------------------------------------------------------------------

def read_results(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """(file, record) for every complete JSON line of the given files or folders (*.jsonl inside)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for p in paths:
        path = Path(p)
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not path.exists():
            raise PeftcalcError(f"no results at {path}")
        for f in files:
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a partial last line (a writer killed mid-write)
                if isinstance(rec, dict):
                    out.append((str(f), rec))
    return out


def _setup_and_method(rec: dict[str, Any]):
    from peftcalc.methods import MethodOptions, make_method
    from peftcalc.methods.targets import parse_targets
    from peftcalc.setup import Setup

    run = rec.get("run") or {}
    s = rec.get("setup") or {}
    opts = (rec.get("detail") or {}).get("method_options") or {}
    if run:
        options = MethodOptions(rank=run.get("rank", 8), targets=parse_targets(run.get("targets")),
                                virtual_tokens=run.get("virtual_tokens", 20), bottleneck=run.get("bottleneck", 64),
                                adapter_variant=run.get("adapter_variant", "houlsby"),
                                prefix_projection=bool(run.get("prefix_projection", False)),
                                quant_bits=int(run.get("quant_bits", 4)))
    else:
        targets = opts.get("targets")
        options = MethodOptions(rank=opts.get("rank", 8), targets=tuple(targets) if targets else None,
                                virtual_tokens=opts.get("virtual_tokens", 20), bottleneck=opts.get("bottleneck", 64),
                                adapter_variant=opts.get("variant", "houlsby"),
                                prefix_projection=bool(opts.get("projection", False)),
                                quant_bits=4 if opts.get("base_storage", "nf4") == "nf4" else 8)
    method = make_method(rec.get("method") or run.get("method"), options)
    nproc = int(run.get("nproc", 1) or 1)
    setup = Setup(precision=s.get("precision", run.get("precision", "fp32")), optimizer=s.get("optimizer", "adamw"),
                  batch_size=int(s.get("batch_size", run.get("batch", 1))), seq_len=int(s.get("seq_len", run.get("seq", 512))),
                  gradient_checkpointing=bool(s.get("gradient_checkpointing", run.get("gradient_checkpointing", False))),
                  attention=s.get("attention", run.get("attention", "sdpa")),
                  num_gpus=max(nproc, int(s.get("num_gpus", 1))), zero_stage=int(s.get("zero_stage", run.get("zero", 0))),
                  adamw_impl=s.get("adamw_impl", run.get("adamw_impl", "foreach")))
    return method, setup


def _spec(rec: dict[str, Any]):
    run = rec.get("run") or {}
    if run.get("config"):
        from peftcalc.model.hf_config import load_config

        return load_config(run["config"])
    from peftcalc.model.catalogue import get_model

    return get_model(run.get("model") or (rec.get("model") or {}).get("name"))


def predicted_bytes(spec: Any, method: Any, setup: Any) -> tuple[dict[str, int], str]:
    """The estimate in the measured record's terms (see the module docstring)."""
    from peftcalc.estimate import estimate_method

    m = estimate_method(spec, method, setup).memory
    return ({"peak": m.peak_bytes, "weights": m.weight_bytes + m.buffer_bytes + m.master_weight_bytes,
             "gradients": m.gradient_bytes, "optimizer_states": m.optimizer_state_bytes,
             "activations": m.activation_bytes}, m.peak_phase)


def compare_record(source: str, rec: dict[str, Any]) -> list[Comparison]:
    """The comparisons one measured record gives: one, or one per rank. Records that did not measure (oom,
    errors) give none."""
    if rec.get("status") != "ok" or not rec.get("measured_bytes"):
        return []
    model = rec.get("model") or {}
    label = _label(rec)
    base = dict(source=source, backend=str(rec.get("backend")), device=str(rec.get("device")),
                family=str(model.get("family")), model=str(model.get("name")), method=str(rec.get("method")),
                setup=dict(rec.get("setup") or {}), measured_phase=rec.get("peak_phase"))
    try:
        spec = _spec(rec)
        method, setup = _setup_and_method(rec)
        predicted, phase = predicted_bytes(spec, method, setup)
    except Exception as e:  # noqa: BLE001 - a record we cannot predict is reported, not fatal
        return [Comparison(label, measured=_bytes(rec["measured_bytes"]), predicted={}, predicted_phase=None,
                           error=f"{type(e).__name__}: {e}", **base)]
    ranks = rec.get("per_rank") or []
    if ranks:
        return [Comparison(f"{label} rank{r.get('rank')}", measured=_bytes(r["measured_bytes"]), predicted=predicted,
                           predicted_phase=phase, rank=r.get("rank"), **base) for r in ranks]
    return [Comparison(label, measured=_bytes(rec["measured_bytes"]), predicted=predicted, predicted_phase=phase,
                       **base)]


def _bytes(d: dict[str, Any]) -> dict[str, int]:
    return {k: int(d[k]) for k in COMPONENTS if d.get(k) is not None}


def _label(rec: dict[str, Any]) -> str:
    run, s = rec.get("run") or {}, rec.get("setup") or {}
    model = (rec.get("model") or {}).get("name") or run.get("model")
    bits = [str(model), str(rec.get("method")), str(s.get("precision")),
            f"b{s.get('batch_size')}xs{s.get('seq_len')}"]
    if s.get("gradient_checkpointing"):
        bits.append("ckpt")
    if s.get("attention") and s.get("attention") != "sdpa":
        bits.append(str(s["attention"]))
    bits.append(str(s.get("adamw_impl")))
    if (run.get("nproc") or 1) > 1:
        bits.append(f"nproc{run['nproc']} zero{run.get('zero', 0)}")
    return " ".join(bits)


def compare_all(records: Iterable[tuple[str, dict[str, Any]]]) -> list[Comparison]:
    seen: set[tuple] = set()
    out: list[Comparison] = []
    for source, rec in records:
        key = (rec.get("run_key") or _label(rec), rec.get("backend"), str(rec.get("device")))
        if key in seen:  # the same run recorded twice (a resumed suite on another commit): keep the first
            continue
        seen.add(key)
        out.extend(compare_record(source, rec))
    return out


def summarize(comparisons: list[Comparison], tolerance: float = DEFAULT_TOLERANCE,
              max_tolerance: float = DEFAULT_MAX_TOLERANCE, share: float = DEFAULT_SHARE) -> Summary:
    errors = [abs(e) for c in comparisons if c.error is None and (e := c.relative_error("peak")) is not None]
    failed = sum(1 for c in comparisons if c.error is not None)
    exact = {k: sum(1 for c in comparisons if c.error is None and c.difference(k) == 0)
             for k in ("weights", "gradients", "optimizer_states")}
    if not errors:
        return Summary(len(comparisons), 0, 0.0, 0.0, float("inf") if failed else 0.0, tolerance, max_tolerance,
                       share, exact)
    errors.sort()
    p90 = errors[min(len(errors) - 1, max(0, -(-9 * len(errors) // 10) - 1))]
    worst = float("inf") if failed else errors[-1]
    return Summary(len(errors) + failed, sum(1 for e in errors if e <= tolerance), statistics.median(errors), p90,
                   worst, tolerance, max_tolerance, share, exact)


# ---- the history behind every estimate's uncertainty band ---------------------------------------------------

@dataclass(frozen=True)
class Uncertainty:
    """The band an estimate's peak carries: the worst relative error of the validated runs of its kind."""

    percent: float
    runs: int
    kind: str  # the group the band comes from ("lora +ckpt", "lora", or "all")

    def text(self) -> str:
        return f"±{self.percent:.1f} %, from {self.runs} traced run{'s' if self.runs != 1 else ''}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def history(comparisons: list[Comparison]) -> dict[str, Any]:
    """Per kind of setup: how many runs and their worst and p90 |peak error|, for the estimate's band."""
    groups: dict[str, list[float]] = {}
    for c in comparisons:
        e = c.relative_error("peak")
        if c.error is None and e is not None:
            for k in {c.kind, c.method, "all"}:
                groups.setdefault(k, []).append(abs(e))
    return {"description": "peftcalc validate: |relative error| of the analytic peak against measured steps, by kind "
                           "of setup (method, +ckpt for gradient checkpointing); regenerate with "
                           "`peftcalc validate --write-history`",
            "kinds": {k: {"runs": len(v), "max_percent": round(max(v), 3),
                          "p90_percent": round(sorted(v)[min(len(v) - 1, -(-9 * len(v) // 10) - 1)], 3)}
                      for k, v in sorted(groups.items())}}


@lru_cache(maxsize=1)
def _load_history() -> dict[str, Any]:
    try:
        return json.loads(HISTORY_FILE.read_text(encoding="utf-8")).get("kinds", {})
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=256)
def uncertainty(method: str, checkpointing: bool) -> Uncertainty | None:
    """The band for this kind of setup, from the committed validation history: its own kind, else the
    method's runs, else all runs. None when no history exists."""
    kinds = _load_history()
    for k in (setup_kind(method, checkpointing), method, "all"):
        h = kinds.get(k)
        if h and h.get("runs"):
            return Uncertainty(max(float(h["max_percent"]), 0.1), int(h["runs"]), k)
    return None
