"""Collective volumes per step against the papers' formulas (ZeRO section 7, Megatron/Korthikanti per-layer
all-reduces, the ring algorithm) and FSDP2's padding against torch's own chunking. The measured torchrun runs
(tests/measure/test_distributed.py, slow) check DDP and FSDP2 payloads to the byte."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peftcalc.collectives import Collective, Group, Kind, Phase, fsdp_units, padded_numel, step_volume
from peftcalc.estimate import adapt
from peftcalc.methods import make_method
from peftcalc.methods.base import TensorGroup
from peftcalc.model.catalogue import get_model
from peftcalc.precision import get_precision
from peftcalc.setup import Setup

SPEC = get_model("llama-2-7b")
FULL = adapt(SPEC, make_method("full"))
LORA = adapt(SPEC, make_method("lora"))
BASE = Setup(precision="bf16-mixed", seq_len=1024, batch_size=2)


@pytest.mark.parametrize("kind, n, payload, sent", [
    (Kind.ALL_REDUCE, 8, 800, 2 * 7 * 100),  # 2(n-1)/n: reduce-scatter then all-gather of n chunks
    (Kind.ALL_GATHER, 4, 400, 300),
    (Kind.REDUCE_SCATTER, 2, 10, 5),
    (Kind.BROADCAST, 4, 400, 300),
    (Kind.SEND, 2, 123, 123),
    (Kind.ALL_REDUCE, 3, 10, 14),  # 2 * 2 / 3 * 10 = 13.3, rounded up to the byte
])
def test_ring_bytes_sent(kind, n, payload, sent):
    assert Collective(kind, Group.DP, n, Phase.BACKWARD, payload, 1, "").sent_bytes_per_call == sent


def dp_sent(adaptation, setup) -> int:
    return sum(c.sent_bytes for c in step_volume(adaptation, setup).collectives if c.group is Group.DP)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_zero_paper_volumes(n):
    """ZeRO (Rajbhandari et al. 2020, section 7.2): DP and ZeRO-1/2 move 2Ψ per rank per step (an all-reduce is a
    reduce-scatter plus an all-gather), ZeRO-3 3Ψ (an all-gather in forward and backward, a reduce-scatter),
    1.5x. Ψ here in bytes of bf16 weights; DDP's buffer broadcast is not in the paper and left out."""
    psi = sum(g.total for g in FULL.tensors) * 2
    ring = (n - 1) / n
    ddp = step_volume(FULL, replace(BASE, num_gpus=n)).by_kind(Group.DP)["all-reduce"]["sent_bytes"]
    assert ddp == pytest.approx(2 * ring * psi, abs=1)
    assert dp_sent(FULL, replace(BASE, num_gpus=n, zero_stage=2)) == pytest.approx(2 * ring * psi, rel=1e-9)
    zero3 = step_volume(FULL, replace(BASE, num_gpus=n, zero_stage=3)).collectives
    reduced = sum(c.payload_bytes * c.calls for c in zero3 if c.kind is Kind.REDUCE_SCATTER)
    assert sum(c.sent_bytes for c in zero3) / reduced == pytest.approx(3 * ring, rel=1e-6)


def test_only_trainable_gradients_are_reduced():
    """PEFT: DDP all-reduces only the adapters' gradients (fp32, peft's default), never the frozen base's."""
    lora_grads = sum(g.total * 4 for g in LORA.tensors if g.trainable)
    v = step_volume(LORA, replace(BASE, num_gpus=4)).by_kind(Group.DP)
    assert v["all-reduce"]["payload_bytes"] == lora_grads
    z3 = step_volume(LORA, replace(BASE, num_gpus=4, zero_stage=3)).by_kind(Group.DP)
    assert z3["reduce-scatter"]["payload_bytes"] < z3["all-gather"]["payload_bytes"] / 100  # base weights gathered


def test_ddp_broadcasts_buffers_every_forward():
    v = step_volume(FULL, replace(BASE, num_gpus=2, gradient_accumulation=3)).by_kind(Group.DP)
    assert v["broadcast"]["calls"] == 3 and v["all-reduce"]["calls"] == 1  # no_sync on accumulation steps


@pytest.mark.parametrize("dim0, rest, n", [(7, 64, 2), (4096, 4096, 8), (1, 5, 4), (32000, 4096, 3), (11, 1, 4)])
def test_fsdp2_padding_is_torch_chunks(dim0, rest, n):
    """FSDP2 shards dim 0 with torch.chunk and pads every shard to the first one's size."""
    torch = pytest.importorskip("torch")
    chunks = torch.empty(dim0, rest).chunk(n)
    padded = chunks[0].numel() * n
    g = TensorGroup("w", dim0 * rest, 1, True, False, shape=(dim0, rest) if rest > 1 else ())
    assert padded_numel(g, n) == padded


def test_fsdp_units_hold_every_weight():
    precision = get_precision("bf16-mixed")
    units = fsdp_units(FULL, precision, 1)  # no padding on one rank
    assert sum(u.weight_bytes * u.count for u in units) == sum(g.total * 2 for g in FULL.tensors)
    assert [u.name for u in units] == ["root", "model.layers"] and units[1].count == SPEC.arch.num_layers


def test_tensor_parallel_all_reduces_per_layer():
    """Megatron-LM (Shoeybi et al. 2019, section 3; Korthikanti et al. 2022, section 4.2.2): 2 all-reduces of the
    (b, s, h) activation per block in forward and 2 in backward; sequence parallelism swaps each for an
    all-gather + reduce-scatter pair of the same total volume."""
    s = replace(BASE, tensor_parallel=4)
    act = 2 * 1024 * SPEC.arch.hidden_size * 2
    v = step_volume(FULL, s).by_kind(Group.TP)
    assert v["all-reduce"]["calls"] == 4 * SPEC.arch.num_layers and v["all-reduce"]["payload_bytes"] == \
        4 * SPEC.arch.num_layers * act
    sp = step_volume(FULL, replace(s, sequence_parallel=True))
    assert sum(c.sent_bytes for c in sp.collectives) == sum(c.sent_bytes for c in step_volume(FULL, s).collectives)


def test_pipeline_sends_per_microbatch_and_splits_the_rest():
    s = replace(BASE, pipeline_parallel=4, gradient_accumulation=8, num_gpus=2)
    v = step_volume(FULL, s)
    sends = v.by_kind(Group.PP)["send"]
    assert sends["calls"] == 16 and sends["payload_bytes"] == 16 * 2 * 1024 * SPEC.arch.hidden_size * 2
    one_stage = step_volume(FULL, replace(s, pipeline_parallel=1)).by_kind(Group.DP)["all-reduce"]["payload_bytes"]
    assert v.by_kind(Group.DP)["all-reduce"]["payload_bytes"] == -(-one_stage // 4)


def test_one_gpu_communicates_nothing():
    assert step_volume(FULL, BASE).collectives == ()
