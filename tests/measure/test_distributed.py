"""Several processes under torchrun on the CPU (gloo): FSDP2 gives each rank half of every parameter, gradient and
optimizer state; the per-rank numbers come back in `per_rank`; each rank's collectives (the c10d calls of one step)
equal the analytic volume of peftcalc/collectives.py, to the byte for DDP and within 1 % for FSDP2."""

from __future__ import annotations

import pytest

from peftcalc.errors import PeftcalcError
from peftcalc.measure.api import measure
from peftcalc.measure.distributed import check_distributed_setup
from peftcalc.results.record import Bytes, CollectiveBytes, RankResult
from peftcalc.methods import make_method
from peftcalc.setup import Setup

from .tiny_models import tiny

SETUP = dict(batch_size=2, seq_len=32, precision="fp32")


def _single_process(method: str):
    r = measure(tiny("llama"), make_method(method), Setup(**SETUP), "trace", save_checkpoint=False)
    assert r.status == "ok"
    return r


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp2_two_ranks_hold_half_of_everything(method):
    one = _single_process(method)
    two = measure(tiny("llama"), make_method(method), Setup(**SETUP, zero_stage=3), "run", nproc=2, timed_steps=1)
    assert two.status == "ok", two.detail.error
    assert [r.rank for r in two.per_rank] == [0, 1]
    d = two.to_dict()
    assert len(d["per_rank"]) == 2
    assert set(d["per_rank"][0]) == {"rank", "measured_bytes", "collective_bytes", "predicted_collective_bytes"}
    assert two.setup.num_gpus == 2 and two.setup.zero_stage == 3

    spec = tiny("llama")
    added = 0 if method == "full" else one.trainable_params  # LoRA's A and B are parameters too
    params = (spec.total_params + added) * 4
    buffers = one.measured.weights - params  # rotary inv_freq: replicated, not sharded
    trainable = one.trainable_params * 4
    step_counters = one.measured.optimizer_states - 2 * trainable  # AdamW's 4-byte `step`, one per tensor
    for r in two.per_rank:
        m = r.measured
        assert m.weights == params // 2 + buffers  # every dimension here is even: exact halves
        assert m.gradients == trainable // 2
        # exp_avg and exp_avg_sq are sharded; AdamW's 4-byte step counter is a plain tensor on each rank
        assert m.optimizer_states == 2 * trainable // 2 + step_counters
        assert m.activations > 0 and m.peak > m.weights + m.optimizer_states
    assert two.measured == Bytes.max_of([r.measured for r in two.per_rank])  # top level: the worst rank
    assert two.predicted is not None and two.step_seconds and two.tokens_per_second


@pytest.mark.parametrize("zero,message", [(1, "ZeRO-1"), (3, None)])
def test_distributed_setup_checks(zero, message):
    setup = Setup(**SETUP, zero_stage=zero)
    if message:
        with pytest.raises(PeftcalcError, match=message):
            check_distributed_setup(setup, 2)
    else:
        assert check_distributed_setup(setup, 2).num_gpus == 2
    with pytest.raises(PeftcalcError, match="--gpus 4"):
        check_distributed_setup(Setup(**SETUP, zero_stage=3, num_gpus=4), 2)
    with pytest.raises(PeftcalcError, match="offload"):
        check_distributed_setup(Setup(**SETUP, zero_stage=3, offload=True), 2)


# Every pair of (method, sharding, ranks) values once: four torchrun runs of 10-17 s instead of all eight.
PAIRWISE = [("full", 0, 2), ("full", 3, 4), ("lora", 0, 4), ("lora", 3, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("method,zero,nproc", PAIRWISE)
def test_collective_bytes_equal_the_analytic_volume(method, zero, nproc):
    """What the ranks hand to the collectives in one step (the meter records every c10d call with its tensors)
    against peftcalc/collectives.py: DDP to the byte (trainable gradients all-reduced, buffers broadcast), FSDP2
    within 1 % (per-unit all-gathers in forward and backward with FSDP2's padding, reduce-scatters of the
    trainable gradients) - in fact to the byte too. The cases cover every pair of a method, a sharding and a
    world size (an orthogonal array): a volume wrong for one combination of two of them shows."""
    r = measure(tiny("llama"), make_method(method), Setup(**SETUP, zero_stage=zero), "run", nproc=nproc,
                timed_steps=1)
    assert r.status == "ok", r.detail.error
    assert len(r.per_rank) == nproc
    for rank in r.per_rank:
        got, want = rank.collective_bytes, rank.predicted_collective_bytes
        assert got is not None and want is not None and got.sent_bytes > 0
        if zero == 0:
            assert got == want
            assert got.kind("all-reduce").payload_bytes == r.trainable_params * 4  # fp32 trainable gradients only
        else:
            assert abs(got.sent_bytes - want.sent_bytes) <= 0.01 * want.sent_bytes
            assert {k for k, _ in got.by_kind} == {"all-gather", "reduce-scatter"}
        d = r.to_dict()["per_rank"][rank.rank]
        assert d["collective_bytes"]["sent_bytes"] == got.sent_bytes  # the JSON contract


def test_rank_results_read_back_old_and_new_records():
    old = {"rank": 1, "measured_bytes": {"weights": 1, "gradients": 2, "optimizer_states": 3, "activations": 4,
                                         "peak": 9}}
    r = RankResult.from_dict(old)
    assert r.collective_bytes is None and r.to_dict() == old  # an older record stays as it was
    kinds = {"all-reduce": {"calls": 1, "payload_bytes": 8, "sent_bytes": 8}}
    new = dict(old, collective_bytes={"sent_bytes": 8, "payload_bytes": 8, "by_kind": kinds},
               predicted_collective_bytes={"sent_bytes": 8, "payload_bytes": 8, "by_kind": kinds})
    back = RankResult.from_dict(new)
    assert back.collective_bytes == CollectiveBytes.of(kinds) and back.to_dict() == new
