"""The live-storage meter: new storages add, views do not, frees subtract, phases keep their peaks; the same
numbers on fake tensors as on real ones."""

from __future__ import annotations

import gc

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from peftcalc.measure.meter import LiveMeter, SavedTensorsAccount, storage_keys, unique_storage_bytes


def _graph(meter: LiveMeter) -> dict[str, int]:
    x = torch.randn(100, 100, requires_grad=True)  # 40 000 B
    meter.track(x)
    out = {}
    with meter:
        meter.phase("forward")
        y = (x * 2).sin().sum()  # x*2 (40 000, saved by sin) + sin (40 000, freed once summed) + sum (4)
        out["after_forward"] = meter.current
        meter.phase("backward")
        y.backward()
        del y
        meter.phase(None)
        out["after_backward"] = meter.current
    out["forward_peak"] = meter.phases.peaks["forward"]
    out["backward_peak"] = meter.phases.peaks["backward"]
    out["grad"] = unique_storage_bytes([x.grad])
    return out


def test_counts_new_storages_views_once_and_frees():
    m = LiveMeter()
    with m:
        a = torch.empty(1000)  # 4000 B
        b = a.view(10, 100)
        assert m.current == 4000
        del a
        assert m.current == 4000  # the view keeps the storage alive
        del b
        assert m.current == 0
        c = torch.empty(10, dtype=torch.bfloat16)
        assert m.current == 20
    assert m.peak == 4000
    del c


def test_phases_record_their_own_peak():
    m = LiveMeter()
    with m:
        m.phase("forward")
        t = torch.empty(1000)
        del t
        m.phase("backward")
        u = torch.empty(10)
        m.phase(None)
    assert m.phases.peaks == {"forward": 4000, "backward": 40}
    assert m.phases.peak == 4000 and m.phases.peak_phase == "forward"
    del u


def test_real_graph_numbers():
    out = _graph(LiveMeter())
    assert out["after_forward"] == 40_000 + 40_000 + 4
    assert out["forward_peak"] == 40_000 * 3 + 4
    assert out["grad"] == 40_000


def test_fake_tensors_count_the_same_as_real_ones():
    real = _graph(LiveMeter())
    with FakeTensorMode():
        fake = _graph(LiveMeter())
    assert fake == real


def test_unique_storage_bytes_counts_shared_storage_once():
    w = torch.empty(10, 10)
    assert unique_storage_bytes([w, w, w.t(), w[0]]) == 400
    assert unique_storage_bytes([w, torch.empty(5)], exclude=storage_keys([w])) == 20


def test_saved_tensors_excludes_parameters_and_changes_nothing():
    w = torch.nn.Parameter(torch.randn(64, 64))
    x = torch.randn(8, 64)
    m = LiveMeter()
    m.track(w, x)
    with m:
        with SavedTensorsAccount(exclude=storage_keys([w])) as saved:
            h = torch.tanh(x @ w)  # mm saves x (for w's gradient); tanh saves its output h
            loss = h.sum()
        after = m.current
        loss.backward()
        del loss, h
        gc.collect()
    assert saved.bytes == 8 * 64 * 4 * 2  # x and tanh's output; w is a parameter
    assert after == 64 * 64 * 4 + 8 * 64 * 4 + 8 * 64 * 4 + 4  # w, x, h and the loss
    assert m.current == 2 * 64 * 64 * 4 + 8 * 64 * 4  # w, its grad and x: nothing leaked


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.uint8, 1)])
def test_bytes_follow_dtype(dtype, size):
    m = LiveMeter()
    with m:
        t = torch.zeros(100, dtype=dtype)
    assert m.peak == 100 * size
    del t


def test_storage_resizes_are_counted():
    """FSDP2 frees a gathered weight with untyped_storage().resize_(0) and re-grows it with resize_(n): no operator
    output shows either, so the meter wraps resize_ while it is entered."""
    import torch

    from peftcalc.measure.meter import LiveMeter

    w = torch.empty(1000)  # made before the meter, as FSDP2's unsharded parameters are
    w.untyped_storage().resize_(0)
    meter = LiveMeter()
    with meter:
        meter.phase("forward")
        w.untyped_storage().resize_(4000)  # the all-gather's copy-out target grows: +4000 bytes
        grown = meter.current
        x = torch.ones(10)  # an operator output: +40 bytes
        w.untyped_storage().resize_(0)  # freed after forward
        meter.phase(None)
    assert grown == 4000 and meter.current == 40 and meter.phases.peaks["forward"] == 4040
    assert torch.UntypedStorage.resize_.__name__ == "resize_" and x.numel() == 10
    w.untyped_storage().resize_(8)  # outside the meter nothing is counted any more
    assert meter.current == 40


def test_collective_log_records_payloads():
    """Outside torchrun the c10d operators need a process group: a one-rank gloo group shows what is recorded."""
    import os

    import torch
    import torch.distributed as dist

    from peftcalc.measure.meter import CollectiveLog

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29613")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with CollectiveLog() as log:
            t = torch.ones(10)
            dist.all_reduce(t)
            out = torch.empty(10)
            dist.all_gather_into_tensor(out, t)
            dist.barrier()
        kinds = [(c.kind, c.payload_bytes) for c in log.calls]
        assert ("all-reduce", 40) in kinds and ("all-gather", 40) in kinds
        assert all(k in ("all-reduce", "all-gather") for k, _ in kinds)  # a barrier moves no data
    finally:
        dist.destroy_process_group()
