"""`peftcalc bench`: run a benchmark suite (a TOML matrix), appending one JSON line per run to bench/results/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from peftcalc.errors import PeftcalcError


@click.command("bench")
@click.argument("suite", type=click.Path(dir_okay=False))
@click.option("--results-dir", type=click.Path(file_okay=False),
              help="Where <suite name>.jsonl is appended (default: bench/results beside the suites folder).")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded with status error.")
@click.option("--time-budget", type=float, metavar="SECONDS",
              help="Start no run after this many seconds (the rest is left for the next call).")
@click.option("--only", metavar="TEXT", help="Only the runs whose label contains TEXT, e.g. 'llama-2-7b lora'.")
@click.option("--list", "list_runs", is_flag=True, help="List the suite's runs and exit.")
def bench_cmd(**kw: Any) -> None:
    """Run every run of a suite not yet recorded for this environment (torch/transformers/peft versions and
    device); each result is appended as one JSON line as soon as it is done, so a killed suite resumes where
    it stopped. Failed and out-of-memory runs are recorded, and the suite goes on.

    \b
    Examples:
      peftcalc bench bench/suites/cpu-small.toml
      peftcalc bench bench/suites/cpu-small.toml --only mixtral --list
      peftcalc bench bench/suites/gpu.toml --results-dir /tmp/gpu-results --time-budget 400
    """
    from peftcalc.measure.suite import load_suite, results_path, run_label, run_suite

    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise PeftcalcError(f"peftcalc bench needs torch, transformers and peft ({e}): "
                            "pip install 'peftcalc[measure]'") from None
    suite = load_suite(kw["suite"])
    if kw["time_budget"] is not None and kw["time_budget"] <= 0:
        raise PeftcalcError(f"--time-budget must be a positive number of seconds, got {kw['time_budget']}")
    runs = [r for r in suite.runs if kw["only"] is None or kw["only"] in run_label(r)]
    if kw["only"] is not None and not runs:
        raise PeftcalcError(f"no run of {suite.name} matches --only {kw['only']!r} (see --list)")
    if kw["list_runs"]:
        for r in runs:
            click.echo(run_label(r))
        return
    out = results_path(suite, kw["results_dir"])
    from peftcalc.atomic import check_folder

    check_folder(Path(out).parent, "--results-dir")
    click.echo(f"{suite.name}: {len(runs)} runs -> {out}")
    lines: list[str] = []
    with click.progressbar(length=len(runs), label=suite.name, show_pos=True, show_eta=True,
                           item_show_func=lambda s: s) as bar:
        def progress(i: int, n: int, run: Any, status: str) -> None:
            lines.append(f"[{i}/{n}] {run_label(run)}: {status}")
            bar.update(1, f"{run_label(run)}: {status}")

        summary = run_suite(suite, kw["results_dir"], kw["retry_failed"], kw["time_budget"], kw["only"],
                            progress=progress)
    for line in lines:
        if "ok (" not in line and "skipped" not in line:
            click.echo(line)
    statuses = ", ".join(f"{v} {k}" for k, v in sorted(summary.statuses.items())) or "none"
    click.echo(f"{summary.ran} ran ({statuses}), {summary.skipped} already recorded, "
               f"{summary.not_started} left for later; {summary.seconds:.0f} s -> {Path(out)}")
