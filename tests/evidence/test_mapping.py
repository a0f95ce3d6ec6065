"""Each record's run as the source states it, in peftcalc's terms; what cannot be predicted says why."""

from __future__ import annotations

import pytest

from peftcalc.evidence.compare import compare_record
from peftcalc.evidence.load import load_records
from peftcalc.evidence.mapping import Mapped, NotPredicted, map_record

RECORDS = {r.id: r for r in load_records()}


def mapped(rid: str) -> Mapped:
    m = map_record(RECORDS[rid])
    assert isinstance(m, Mapped), m
    return m


def test_litgpt_qlora_resource_table():
    """lit-gpt tutorials/resource-tables.md: Llama-2-7B, bnb.nf4-dq, LoRA r=8 on q and v, bf16-true, micro-batch 1
    of the 1,304-token longest sample, no checkpointing, bitsandbytes 0.41.1, an A100 (pre-Hopper workspace)."""
    m = mapped("litgpt/rt-lora-Llama-2-7b-hf-bnb.nf4-dq-mb1-1gpu")
    assert m.method.name == "qlora" and m.method.rank == 8
    s = m.setup
    assert (s.precision, s.batch_size, s.seq_len, s.gradient_checkpointing) == ("bf16-true", 1, 1304, False)
    assert s.bitsandbytes_version == "0.41.1" and s.loss == "chunked" and not s.padded
    assert m.overhead.workspace == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert m.differences and "fused linear" in m.differences[0]


def test_peft_metamathqa_lora():
    """peft's MetaMathQA result: bf16 model without autocast, batch 4 padded to the longest (<= 768 tokens)."""
    m = map_record(RECORDS["peft-metamathqa/lora-rank32/max"])
    if isinstance(m, NotPredicted) and "not in the catalogue" in m.reason:
        pytest.skip(m.reason)  # the 2025-2026 catalogue (another issue) brings Llama-3.2-3B
    assert isinstance(m, Mapped)
    assert m.method.rank == 32 and set(m.method.targets) == {"q_proj", "v_proj"}
    s = m.setup
    assert (s.precision, s.batch_size, s.seq_len, s.padded, s.attention) == ("bf16", 4, 768, True, "sdpa")


def test_fms_trainer_bf16_packing_flash_reentrant():
    """fms-acceleration: HF Trainer bf16=True on a bf16 model, packed rows, flash-attn 2, transformers 4.x
    gradient checkpointing (use_reentrant=True by default before transformers 5)."""
    fms = [r for i, r in RECORDS.items() if i.startswith("fms-acceleration/") and r.quantization is None
           and isinstance(map_record(r), Mapped)]
    assert len(fms) >= 40
    for r in fms:
        s = mapped(r.id).setup
        assert s.precision == ("bf16-autocast" if "bf16=True" in r.precision_quote else "bf16"), r.id
        assert (s.attention, s.packing, s.gradient_checkpointing, s.reentrant_checkpointing) == \
            ("flash_attention_2", True, True, True)
    assert any(mapped(r.id).setup.precision == "bf16-autocast" for r in fms)


@pytest.mark.parametrize("rid, reason", [
    ("fms-acceleration/accelerated-peft-autogptq/Mistral-7B-v0.1-GPTQ/lora-g1-b4/alloc", "GPTQ"),
    ("litgpt/rt-adapter-Llama-2-7b-hf-None-mb1-1gpu", "adaption_prompt"),
    ("hf-docs/peft-readme/T0_3B-full-pytorch", "not stated"),
])
def test_what_cannot_be_predicted_says_why(rid, reason):
    rid = next(i for i in RECORDS if i.startswith(rid.rsplit("/", 1)[0])) if rid not in RECORDS else rid
    m = map_record(RECORDS[rid])
    assert isinstance(m, NotPredicted) and reason in m.reason
    c = compare_record(RECORDS[rid])
    assert c.error_percent is None and c.reason == m.reason


def test_each_quantity_meets_its_estimate():
    by = {}
    for rid in ("litgpt/rt-lora-Llama-2-7b-hf-None-mb1-1gpu", "answerai-fsdp-qlora/3090/llama2-7b-lora-ctx512-bs1",
                "hf-docs/transformers-anatomy/bert-large-vanilla-bs4"):
        c = compare_record(RECORDS[rid])
        by[c.record.quantity] = c
    assert by["max_allocated"].compared_with == "allocated peak"
    assert by["max_reserved"].compared_with == "reserved"
    assert by["device_used"].compared_with == "device total"
    p = by["device_used"].predicted
    assert p.tensor_peak <= p.allocated <= p.reserved <= p.total
