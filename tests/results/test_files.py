"""Results files: appended durably, a killed writer's partial line repaired, every committed line read back to
the same JSON it was written as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.results.files import Record, append_line, committed_results, read_lines, read_records, repair_tail
from peftcalc.results.request import SETUP_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_append_is_one_line_and_a_partial_last_line_is_repaired(tmp_path):
    f = tmp_path / "r.jsonl"
    append_line(f, {"a": 1})
    with open(f, "ab") as h:  # a writer killed mid-line
        h.write(b'{"a": 2, "b": [1, 2')
    assert [o["a"] for _, o in read_lines(f)] == [1]  # readers skip the partial line
    append_line(f, {"a": 3})  # the next append cuts it off first
    assert f.read_text().count("\n") == 2
    assert [o["a"] for _, o in read_lines(f)] == [1, 3]


def test_repair_of_a_file_holding_only_a_partial_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_bytes(b'{"a"')
    repair_tail(f)
    assert f.read_bytes() == b""


def test_a_bad_line_in_the_middle_is_named(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(PeftcalcError, match=r"a\.jsonl:2"):
        read_lines(f)


def test_missing_results_are_named(tmp_path):
    with pytest.raises(PeftcalcError, match=r"no \*\.jsonl"):
        read_records([tmp_path])
    with pytest.raises(PeftcalcError, match="no results"):
        read_records([tmp_path / "missing"])


def test_every_committed_line_round_trips_to_the_same_json():
    """from_dict(line).to_dict() is the line itself: the typed record loses nothing a results file holds
    (detail.difference_* is recomputed and must agree too); setup fields added since the line was written
    come back at their defaults."""
    files = committed_results()
    if not files:
        pytest.skip("no committed results")
    n = 0
    for f in files:
        for i, obj in read_lines(f):
            again = json.loads(json.dumps(Record.from_dict(obj, f"{f.name}:{i}").to_dict()))
            added = {k: v for k, v in again["setup"].items() if k not in obj["setup"]}
            assert added == {k: SETUP_DEFAULTS[k] for k in added}, f"{f.name}:{i}"
            again["setup"] = {k: v for k, v in again["setup"].items() if k in obj["setup"]}
            assert again == obj, f"{f.name}:{i}"
            n += 1
    assert n >= 100


def test_records_name_their_source_and_request():
    files = committed_results()
    if not files:
        pytest.skip("no committed results")
    recs = read_records(files[:1])
    assert recs[0].source == f"{files[0].name}:1"
    assert recs[0].request is not None and recs[0].run_key == json.loads(files[0].read_text().splitlines()[0])["run_key"]
