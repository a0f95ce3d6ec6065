"""The published records load into typed records; a broken one fails with its file, line and field."""

from __future__ import annotations

import json

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.evidence.load import PUBLISHED_DIR, load_records


def test_every_committed_record_loads():
    records = load_records()
    assert len(records) >= 628 and len({r.id for r in records}) == len(records)
    assert {r.group for r in records} == {"transformers", "torchtune", "litgpt"}


def test_units_are_what_the_source_printed():
    by_id = {r.id: r for r in load_records()}
    litgpt = by_id["litgpt/rt-lora-Llama-2-7b-hf-bnb.nf4-dq-mb1-1gpu"]  # "13.84 GB" from max_memory_allocated()/1e9
    assert litgpt.unit == "GB" and litgpt.value_bytes == 13_840_000_000
    peft = by_id["peft-metamathqa/lora-rank32/max"]  # "accelerator_memory_max": 22292725760
    assert peft.unit == "bytes" and peft.value_bytes == 22292725760 and peft.quantity == "max_reserved"


def _line(**changes):
    d = json.loads((PUBLISHED_DIR / "litgpt.jsonl").read_text(encoding="utf-8").splitlines()[0])
    d.update(changes)
    return json.dumps(d)


@pytest.mark.parametrize("change, message", [
    (dict(unit="gigabytes"), ":2: field 'unit': 'gigabytes' is not one of"),
    (dict(batch_size=0), ":2: field 'batch_size': must be positive"),
    (dict(value="16.69"), ":2: field 'value': must be int or float"),
    (dict(quantity="peak"), ":2: field 'quantity': 'peak' is not one of"),
])
def test_a_broken_record_names_file_line_and_field(tmp_path, change, message):
    f = tmp_path / "mine.jsonl"
    f.write_text(_line() + "\n" + _line(id="x/1", **change) + "\n", encoding="utf-8")
    with pytest.raises(PeftcalcError, match=message) as e:
        load_records([f])
    assert "mine.jsonl:2" in str(e.value)


def test_missing_fields_and_duplicate_ids(tmp_path):
    f = tmp_path / "a.jsonl"
    d = json.loads(_line())
    del d["quantity"]
    f.write_text(json.dumps(d) + "\n", encoding="utf-8")
    with pytest.raises(PeftcalcError, match="a.jsonl:1: field 'quantity' is missing"):
        load_records([f])
    f.write_text(_line() + "\n" + _line() + "\n", encoding="utf-8")
    with pytest.raises(PeftcalcError, match="a.jsonl:2: field 'id'.*already used at"):
        load_records([f])
    f.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(PeftcalcError, match="a.jsonl:1: not a JSON object"):
        load_records([f])


def test_the_fragmentation_default_is_the_evidence_median():
    from peftcalc.evidence.slack import one_gpu_fraction, slack_pairs
    from peftcalc.overhead import DEFAULT_FRAGMENTATION

    pairs = slack_pairs()
    assert len([p for p in pairs if not p.sharded]) >= 2
    assert all(p.reserved > p.allocated > p.held for p in pairs)
    assert abs(one_gpu_fraction() - DEFAULT_FRAGMENTATION) < 5e-5
