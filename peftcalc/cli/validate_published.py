"""`peftcalc validate --published`: the estimate against published GPU measurements (see `validate --help`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from peftcalc.errors import PeftcalcError


def _selected(records, frameworks, confidences, sources, methods):
    out = [r for r in records
           if (not frameworks or r.framework in frameworks) and (not confidences or r.confidence in confidences)
           and (not sources or any(s in r.id or s in (r.source.repository or "") for s in sources))
           and (not methods or r.method in methods)]
    if not out:
        raise PeftcalcError("no published record matches the filters")
    return out


def validate_published(paths: tuple[str, ...], worst: int | None, as_json: bool, frameworks: tuple[str, ...],
                       confidences: tuple[str, ...], sources: tuple[str, ...], methods: tuple[str, ...],
                       write_bands: str | None, write_predictions: str | None, gate: bool) -> None:
    from peftcalc.atomic import check_folder, write_text_atomic
    from peftcalc.evidence.compare import compare_all
    from peftcalc.evidence.load import load_records
    from peftcalc.evidence.summary import bands, conclude
    from peftcalc.evidence.table import predictions_text
    from peftcalc.render.published import published_dict, published_text

    for path, flag in ((write_bands, "--write-bands"), (write_predictions, "--write-predictions")):
        if path:  # checked before the work, not after it
            check_folder(Path(path).resolve().parent, f"{flag} in")
    records = _selected(load_records(paths), frameworks, confidences, sources, methods)
    comparisons = compare_all(records)
    conclusion = conclude(comparisons, worst or 5)
    if write_bands:
        write_text_atomic(Path(write_bands), json.dumps(bands(comparisons), indent=1) + "\n")
    if write_predictions:
        write_text_atomic(Path(write_predictions), predictions_text(comparisons))
    if as_json:
        click.echo(json.dumps(published_dict(comparisons, conclusion), indent=1))
    else:
        click.echo(published_text(comparisons, conclusion))
    if gate and not conclusion.gate.passed:
        raise SystemExit(1)
