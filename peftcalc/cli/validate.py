"""`peftcalc validate`: the analytic model against every measured step in bench/results (or fresh traces)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from peftcalc.cli.options import json_option
from peftcalc.errors import PeftcalcError


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:,.3f} GB" if abs(n) >= 1e8 else f"{n / 1e6:,.2f} MB"


def _fmt_pct(p: float | None) -> str:
    return "-" if p is None else f"{p:+.2f} %"


def _bytes_check(c: Any, key: str) -> str:
    d = c.difference(key)
    return "-" if d is None else ("=" if d == 0 else f"{d:+,}")


@click.command("validate")
@click.argument("results", nargs=-1, type=click.Path(exists=True))
@click.option("--trace", "trace_suite", type=click.Path(exists=True, dir_okay=False), metavar="SUITE",
              help="Trace the runs of this suite now (fake tensors, this machine) and validate those instead.")
@click.option("--tolerance", type=float, default=2.0, show_default=True,
              help="Peak error (%%) that --share of the runs must stay within.")
@click.option("--max-tolerance", type=float, default=5.0, show_default=True,
              help="Peak error (%%) no run may exceed.")
@click.option("--share", type=float, default=95.0, show_default=True,
              help="Percentage of runs that must be within --tolerance.")
@click.option("--worst", type=int, default=None, metavar="N", help="Show only the N largest peak errors.")
@click.option("--throughput", is_flag=True,
              help="Check TIME instead: predict each published throughput record (bench/published/throughput, or "
                   "RESULTS) and compare with what its source printed.")
@click.option("--target", type=float, default=25.0, show_default=True,
              help="With --throughput: the median |error| of predicted time (%%) to reach (exit status 1 if not).")
@click.option("--write-history", type=click.Path(dir_okay=False, writable=True), metavar="PATH",
              help="Write the error per kind of setup to PATH (the estimate's band; the committed copy is "
                   "peftcalc/data/validation_history.json in a checkout).")
@click.option("--published", is_flag=True,
              help="Compare with published GPU measurements (bench/published/memory, or the RESULTS given) instead.")
@click.option("--framework", "frameworks", multiple=True, metavar="NAME",
              help="With --published: only this framework (transformers+peft, torchtune, litgpt, other:...).")
@click.option("--confidence", "confidences", multiple=True, type=click.Choice(["high", "medium", "low"]),
              help="With --published: only records of this confidence (repeatable).")
@click.option("--source", "sources", multiple=True, metavar="TEXT",
              help="With --published: only records whose id or source repository contains TEXT.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="With --published: only records of this peft method (lora, qlora, full, ...).")
@click.option("--write-bands", type=click.Path(dir_okay=False, writable=True), metavar="PATH",
              help="With --published: write the error per kind to PATH (the band every estimate prints; the "
                   "committed copy is peftcalc/data/published_bands.json).")
@click.option("--write-predictions", type=click.Path(dir_okay=False, writable=True), metavar="PATH",
              help="With --published: write each record's prediction to PATH (the committed table is "
                   "bench/published/predictions.jsonl; a test compares it).")
@click.option("--gate", is_flag=True, help="With --published: exit with status 1 unless the gate passes.")
@json_option
def validate_cmd(results: tuple[str, ...], trace_suite: str | None, tolerance: float, max_tolerance: float,
                 share: float, worst: int | None, throughput: bool, target: float, write_history: str | None,
                 published: bool, as_json: bool, **published_options: Any) -> None:
    """Compare the analytic estimate with measured training steps: per run, the relative error of the peak and
    of the activations, and whether weights, gradients and optimizer states agree to the byte; then the
    median, 90th percentile and largest peak error. Exits with status 1 unless at least --share % of the runs
    are within --tolerance and every run is within --max-tolerance.

    RESULTS are JSON-lines files or folders of them (default: the files committed in bench/results, as
    `peftcalc bench` writes them). A run's setup is rebuilt from its record and estimated with the current code.

    With --published, each published GPU measurement (bench/published/memory) is compared with the estimate of
    its run in the quantity its source measured (allocated peak, reserved, or the device total); records of
    torchtune and litgpt, whose model code differs, are shown apart; records peftcalc cannot predict yet are
    listed with the reason. The gate: over the high- and medium-confidence transformers + peft records, median
    |error| <= 5 %, >= 80 % within 10 %, every QLoRA record within 10 %.

    \b
    Examples:
      peftcalc validate                                   # every committed result in bench/results
      peftcalc validate bench/results                     # every results file there, committed or not
      peftcalc validate bench/results/cpu-accuracy.jsonl --worst 5
      peftcalc validate --trace bench/suites/cpu-accuracy.toml --tolerance 1
      peftcalc validate --write-history peftcalc/data/validation_history.json
      peftcalc validate --json > validation.json
      peftcalc validate --throughput                      # predicted vs published tokens/s and train times
      peftcalc validate --published                       # the published GPU runs
      peftcalc validate --published --framework litgpt --confidence high --method qlora
      peftcalc validate --published --source peft-metamathqa --json
      peftcalc validate --published --write-bands peftcalc/data/published_bands.json
    """
    if published:
        if trace_suite or throughput:
            raise PeftcalcError("--published compares published memory records: give no --trace or --throughput")
        from peftcalc.cli.validate_published import validate_published

        validate_published(results, worst, as_json, **published_options)
        return
    if any(published_options[k] for k in ("frameworks", "confidences", "sources", "methods", "write_bands",
                                          "write_predictions", "gate")):
        raise PeftcalcError("--framework, --confidence, --source, --method, --write-bands, --write-predictions and "
                            "--gate go with --published")
    from peftcalc.validation import compare_all, history, summarize

    if throughput:
        _throughput(results, target, as_json)
        return
    if tolerance <= 0 or max_tolerance <= 0 or not 0 < share <= 100:
        raise PeftcalcError("--tolerance and --max-tolerance must be positive and --share in (0, 100]")
    if write_history:  # checked before the work, not after it
        from peftcalc.atomic import check_folder

        check_folder(Path(write_history).resolve().parent, "--write-history in")
    comparisons = compare_all(_records(results, trace_suite))
    if not comparisons:
        raise PeftcalcError("no successful measured run in the given results")
    s = summarize(comparisons, tolerance, max_tolerance, share)
    if write_history:
        from peftcalc.atomic import write_text_atomic

        write_text_atomic(Path(write_history), json.dumps(history(comparisons), indent=1) + "\n")
    ordered = sorted(comparisons, key=lambda c: -abs(c.relative_error("peak") or 0.0) if c.error is None else -1e9)
    shown = ordered[:worst] if worst else sorted(comparisons, key=lambda c: (c.source, c.label))
    click.echo(json.dumps(_as_json(s, shown), indent=2) if as_json else _as_text(s, shown))
    if not s.passed:
        raise SystemExit(1)


def _throughput(paths: tuple[str, ...], target: float, as_json: bool) -> None:
    from peftcalc.render.throughput import throughput_dict, throughput_text
    from peftcalc.throughput import THROUGHPUT_DIR, compare, load_records, summarize

    if len(paths) > 1:
        raise PeftcalcError("--throughput reads one folder or file of records (default bench/published/throughput)")
    if not paths and not THROUGHPUT_DIR.is_dir():
        raise PeftcalcError(f"no published throughput records at {THROUGHPUT_DIR}: give a folder or a .jsonl file")
    comparisons = [compare(r) for r in load_records(Path(paths[0]) if paths else THROUGHPUT_DIR)]
    summary = summarize(comparisons)
    if summary.points == 0:
        raise PeftcalcError("no published record could be predicted (see the reasons with --json)")
    click.echo(json.dumps(throughput_dict(comparisons, summary, target), indent=2) if as_json
               else throughput_text(comparisons, summary, target))
    if summary.median_abs_percent is not None and summary.median_abs_percent > target:
        raise SystemExit(1)


def _records(results: tuple[str, ...], trace_suite: str | None) -> list[Any]:
    from peftcalc.results.files import committed_results, read_records

    if trace_suite:
        if results:
            raise PeftcalcError("give result files or --trace SUITE, not both")
        return _trace(trace_suite)
    files = list(results) or committed_results()
    if not files:
        raise PeftcalcError("no committed bench/results/*.jsonl found: give result files or folders, or --trace SUITE")
    return read_records(files)


def _as_json(s: Any, shown: list[Any]) -> dict[str, Any]:
    return {
        "summary": {"runs": s.runs, "within_tolerance": s.within, "within_percent": round(s.within_share, 2),
                    "median_percent": round(s.median, 4), "p90_percent": round(s.p90, 4),
                    "max_percent": s.max if s.max != float("inf") else None,
                    "tolerance_percent": s.tolerance, "max_tolerance_percent": s.max_tolerance,
                    "share_percent": s.share, "exact_to_the_byte": s.exact, "passed": s.passed},
        "runs": [{"label": c.label, "source": c.source, "backend": c.backend, "device": c.device,
                  "family": c.family, "method": c.method, "rank": c.rank, "measured_bytes": c.measured.to_dict(),
                  "predicted_bytes": c.predicted.to_dict() if c.predicted else None,
                  "measured_phase": c.measured_phase, "predicted_phase": c.predicted_phase, "error": c.error,
                  "relative_error_percent": {k: (round(e, 4) if (e := c.relative_error(k)) is not None else None)
                                             for k in ("peak", "activations")}} for c in shown],
    }


def _as_text(s: Any, shown: list[Any]) -> str:
    from peftcalc.render.text import table

    rows = []
    for c in shown:
        if c.predicted is None:
            rows.append((c.label, c.backend, _fmt_bytes(c.measured.peak), "-", "no estimate", "-", "-", "-", "-",
                         (c.error or "")[:60]))
            continue
        rows.append((c.label, c.backend, _fmt_bytes(c.measured.peak), _fmt_bytes(c.predicted.peak),
                     _fmt_pct(c.relative_error("peak")), _fmt_pct(c.relative_error("activations")),
                     _bytes_check(c, "weights"), _bytes_check(c, "gradients"), _bytes_check(c, "optimizer_states"),
                     f"{c.measured_phase or '-'}/{c.predicted_phase or '-'}"))
    maxtxt = "no estimate for some run" if s.max == float("inf") else f"{s.max:.2f} %"
    exact = ", ".join(f"{k.replace('_', ' ')} {v}/{s.runs}" for k, v in s.exact.items())
    return "\n".join([
        table(["run", "backend", "peak measured", "peak estimated", "peak err", "activ. err", "weights", "grads",
               "states", "peak phase (meas/est)"], rows),
        "",
        f"{s.runs} runs: median |peak error| {s.median:.2f} %, p90 {s.p90:.2f} %, max {maxtxt}; "
        f"{s.within} ({s.within_share:.1f} %) within {s.tolerance:g} %",
        f"agree to the byte: {exact}  (= equal; otherwise estimate - measured, in bytes)",
        f"gate: >= {s.share:g} % of runs within {s.tolerance:g} % and all within {s.max_tolerance:g} %: "
        f"{'PASSED' if s.passed else 'FAILED'}",
    ])


def _trace(suite_path: str) -> list[Any]:
    from peftcalc.measure.suite import load_suite, run_suite
    from peftcalc.results.files import read_records

    suite = load_suite(suite_path)
    if any(r.backend != "trace" for r in suite.runs):
        raise PeftcalcError(f"--trace traces runs; {suite.name} has runs with another backend")
    with tempfile.TemporaryDirectory(prefix="peftcalc-validate-") as tmp:
        with click.progressbar(length=len(suite.runs), label=f"tracing {suite.name}", show_pos=True) as bar:
            run_suite(suite, results_dir=tmp, progress=lambda *_: bar.update(1))
        return read_records([tmp])
