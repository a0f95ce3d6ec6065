"""Regenerate the profiles shipped with the package: every catalogue model the hand-written replay does not cover,
every method of the default table, the default setup (what `peftcalc estimate --model NAME` shows), so that
estimate answers for a catalogue model with click alone installed; and the setups of the model's committed
measured runs (bench/results), so that `peftcalc validate` re-predicts them without tracing. Other setups are traced
on first use.

    python -m peftcalc.profile.ship                 # every such catalogue model (tens of minutes on 2 cores)
    python -m peftcalc.profile.ship qwen3-8b gpt-oss-20b
    python -m peftcalc.profile.ship --runs-only     # only add what new committed runs need

One file per model config (`shipped/<config sha>.json`, written atomically), holding for each method the profiles
of the default setup's regime (or, where that step cannot be traced, why: estimate says so without tracing), and
the torch/transformers/peft versions that traced them (tests/profile/test_shipped.py checks that every such model
has its file and that a re-trace agrees).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from peftcalc.atomic import write_text_atomic
from peftcalc.errors import PeftcalcError
from peftcalc.kbit import prepared_setup
from peftcalc.methods import DEFAULT_TABLE, Method, MethodOptions, make_method
from peftcalc.model.spec import ModelSpec
from peftcalc.profile import library_versions, shipped_parts, shipped_path
from peftcalc.profile.key import key_parts
from peftcalc.profile.store import PROFILE_FORMAT, profile_key
from peftcalc.setup import Setup
from peftcalc.stepsim.result import replayable

SHIPPED_SETUP = Setup()  # the default estimate's


def shipped_setup(spec: ModelSpec, method: Method) -> Setup:
    """The setup the default estimate traces `method` with: SHIPPED_SETUP as the step runs it (a quantized base:
    peft's kbit preparation turns checkpointing on, kbit.prepared_setup)."""
    return prepared_setup(method.adapt(spec), SHIPPED_SETUP)


def shipped_models() -> list[str]:
    """Catalogue models whose activations come from a traced profile (no hand-written replay)."""
    from peftcalc.model.catalogue import get_model, model_names

    return [n for n in model_names() if not replayable(make_method("full").adapt(get_model(n)))]


def ship_model(spec: ModelSpec, log: Any = print) -> dict[str, Any]:
    """Trace the default table's profiles of one model and write its shipped file; returns the file's content."""
    from peftcalc.measure.profile import trace_profile

    entries: dict[str, Any] = {}
    refused: dict[str, str] = {}  # what the default setup cannot trace, and why: estimate says so without tracing
    for name in DEFAULT_TABLE:
        method = make_method(name, MethodOptions())
        try:
            method.adapt(spec)
        except PeftcalcError as e:  # a method the model does not take (no default targets ...): refused anyway
            log(f"  {name}: not shipped ({e})")
            continue
        t = time.perf_counter()
        setup = shipped_setup(spec, method)
        parts = key_parts(spec, method, setup)
        key = profile_key(parts)
        try:
            profile = trace_profile(spec, method, setup)
        except PeftcalcError as e:  # a step the default setup cannot trace (MoE experts in fp32, a prefix cache)
            log(f"  {name}: not shipped ({e})")
            refused[key] = str(e)
            continue
        entries[key] = {"parts": parts, "profiles": [profile.to_dict()]}
        log(f"  {name}: {time.perf_counter() - t:.1f} s")
    data = {"format": PROFILE_FORMAT, "model": spec.name, "versions": library_versions(), "entries": entries,
            "refused": refused}
    _write(spec, data)  # first: the runs' re-predictions find these (and no older file's), trace only the rest
    return add_committed_runs(spec, data, log)


def add_committed_runs(spec: ModelSpec, data: dict[str, Any], log: Any = print) -> dict[str, Any]:
    """Add to a shipped file's content the profiles that re-predicting this model's committed runs traces (each
    run re-predicted as `peftcalc validate` does it, into an empty cache, whose files are then taken in), and write
    it."""
    from peftcalc.results.files import committed_results, read_records
    from peftcalc.results.predict import repredict

    runs = [r for r in read_records(committed_results()) if _catalogue_model(r) == spec.name]
    with tempfile.TemporaryDirectory(prefix="peftcalc-ship-") as folder, _cache_at(folder):
        for record in runs:
            try:
                repredict(record)
            except PeftcalcError as e:
                log(f"  a committed run: not shipped ({e})")
        for f in sorted(Path(folder, "peftcalc", "profiles").glob("*.json")):
            _take_in(data, json.loads(f.read_text(encoding="utf-8")))
    log(f"  {len(runs)} committed runs")
    _write(spec, data)
    return data


@contextlib.contextmanager
def _cache_at(folder: str) -> Iterator[None]:
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = before


def _catalogue_model(record: Any) -> str | None:
    """The catalogue name a committed run ran (None: a config file, or a record that names none)."""
    from peftcalc.results.predict import request_of

    try:
        request = request_of(record)
    except PeftcalcError:
        return None
    return str(request.model) if request.config is None else None


def _take_in(data: dict[str, Any], cached: dict[str, Any]) -> None:
    """A cache file's profiles into the shipped content, under the key without the library versions."""
    parts = shipped_parts(cached["parts"])
    entry = data["entries"].setdefault(profile_key(parts), {"parts": parts, "profiles": []})
    regimes = [p["regime"] for p in entry["profiles"]]
    entry["profiles"] += [p for p in cached["profiles"] if p["regime"] not in regimes]


def _write(spec: ModelSpec, data: dict[str, Any]) -> None:
    from peftcalc.profile import _shipped

    write_text_atomic(shipped_path(spec), json.dumps(data, sort_keys=True, indent=1) + "\n")
    _shipped.cache_clear()  # the next lookup in this process reads what was written


def main(argv: list[str] | None = None) -> int:
    from peftcalc.model.catalogue import get_model

    ap = argparse.ArgumentParser(prog="python -m peftcalc.profile.ship", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="catalogue names (default: every model without a hand-written replay)")
    ap.add_argument("--runs-only", action="store_true",
                    help="keep the default table's profiles; add only what the committed runs need")
    args = ap.parse_args(argv)
    for name in args.models or shipped_models():
        print(name, flush=True)
        spec, log = get_model(name), (lambda line: print(line, flush=True))
        if args.runs_only:
            add_committed_runs(spec, json.loads(shipped_path(spec).read_text(encoding="utf-8")), log)
        else:
            ship_model(spec, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
