"""Every published record's prediction, recomputed now, equals the committed table
(bench/published/predictions.jsonl). When the model changes on purpose, regenerate the table with the
command the failure names and commit it: the difference is the change's effect on the published evidence."""

from __future__ import annotations

from peftcalc.evidence.compare import compare_all
from peftcalc.evidence.load import load_records
from peftcalc.evidence.table import PREDICTIONS_FILE, REGENERATE, prediction_row, read_predictions


def test_the_committed_table_is_todays_prediction():
    committed = read_predictions(PREDICTIONS_FILE)
    now = {c.record.id: prediction_row(c) for c in compare_all(load_records())}
    assert set(committed) == set(now), f"records added or removed: regenerate with `{REGENERATE}`"
    changed = [rid for rid in now if now[rid] != committed[rid]]
    assert not changed, (f"{len(changed)} predictions changed (first: {changed[0]}: {committed[changed[0]]} -> "
                         f"{now[changed[0]]}); if intended, regenerate with `{REGENERATE}` and commit it")
