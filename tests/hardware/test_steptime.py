"""The step-time model: compute alone on one GPU, the links a group crosses, overlap bounds, the 1F1B bubble, offload;
and the issue's 405B example through the planner (communication non-zero, inter-node bandwidth, ranking)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peftcalc.collectives import Group
from peftcalc.compute import training_flops_per_seq
from peftcalc.estimate import adapt
from peftcalc.errors import PeftcalcError
from peftcalc.hardware.catalogue import get_gpu
from peftcalc.hardware.nodes import get_node, node_for
from peftcalc.hardware.planner import PlanRequest, plan
from peftcalc.hardware.compute_time import optimizer_bytes
from peftcalc.hardware.steptime import (ASSUMED_HOST_MEMORY_BYTES_PER_S, CPU_ADAM_BYTES_PER_PARAM, link_of,
                                        step_time)
from peftcalc.methods import make_method
from peftcalc.model.catalogue import get_model
from peftcalc.setup import Setup

SPEC = get_model("llama-2-7b")
FULL = adapt(SPEC, make_method("full"))
H100 = get_gpu("h100-80gb")
NODE = get_node("hgx-h100-8")
PEAK = H100.bf16_flops_per_s
BASE = Setup(precision="bf16-mixed", seq_len=2048, batch_size=1, gradient_checkpointing=True)


def timed(setup: Setup, adaptation=FULL, node=NODE, mfu=0.4):
    flops = training_flops_per_seq(adaptation, setup.seq_len, setup.gradient_checkpointing)
    return step_time(adaptation, setup, node, H100, flops, mfu), flops


def test_one_gpu_is_compute_at_the_given_mfu_plus_the_optimizer():
    t, flops = timed(BASE)
    assert t.communication_seconds == t.offload_seconds == 0 and t.volume.collectives == ()
    opt = optimizer_bytes(FULL, BASE) / H100.memory_bandwidth_bytes_per_s
    assert t.optimizer_seconds == pytest.approx(opt)
    assert t.step_seconds == pytest.approx(flops.flops_per_seq / (PEAK * 0.4) + opt)
    assert t.tokens_per_step == 2048 and t.mfu == pytest.approx(0.4 * (t.step_seconds - opt) / t.step_seconds)


def test_forward_is_a_third_of_full_training_without_recomputation():
    """Kaplan et al. 2020: forward 2N of the 6N (attention likewise 1:2)."""
    flops = training_flops_per_seq(FULL, 2048, False)
    assert flops.forward_flops_per_seq * 3 == flops.flops_per_seq


def test_a_group_inside_a_node_uses_nvlink_and_across_nodes_the_nics():
    inside, across = replace(BASE, num_gpus=8, zero_stage=3), replace(BASE, num_gpus=16, zero_stage=3)
    assert link_of(Group.DP, inside, NODE) == ("nvlink4-nvswitch", 450 * 10**9)
    assert link_of(Group.DP, across, NODE) == ("infiniband-ndr", 50 * 10**9)
    assert timed(across)[0].links == (("data", "infiniband-ndr", 50 * 10**9),)
    # tensor ranks innermost: tp 8 stays in the node while its data-parallel group spans nodes
    tp = replace(BASE, num_gpus=2, tensor_parallel=8)
    assert link_of(Group.TP, tp, NODE)[0] == "nvlink4-nvswitch" and link_of(Group.DP, tp, NODE)[0] == "infiniband-ndr"


def test_no_network_no_multi_node_time():
    l4 = get_node("aws-g6-48xlarge")
    with pytest.raises(PeftcalcError, match="no sourced bandwidth between its nodes"):
        link_of(Group.DP, replace(BASE, num_gpus=16, zero_stage=3), l4)


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_exposed_communication_is_between_zero_and_all_of_it(zero):
    t, _ = timed(replace(BASE, num_gpus=16, zero_stage=zero))
    assert 0 <= t.communication_seconds <= t.communication_total_seconds
    assert t.communication_total_seconds == pytest.approx(
        sum(c.sent_bytes for c in t.volume.collectives) / (50 * 10**9))


def test_ddp_all_reduce_hides_behind_backward_on_nvlink():
    """7B bf16 gradients over 450 GB/s take ~58 ms; one 2k-token backward at 40 % MFU takes far longer."""
    t, _ = timed(replace(BASE, num_gpus=8))
    assert t.communication_total_seconds > 0 and t.communication_seconds < 1e-3  # only the buffer broadcast


def test_1f1b_bubble():
    """Narayanan et al. 2021 section 2.2: (m + p - 1) micro-batch times; bubble fraction (p - 1) / m."""
    m, p = 16, 4
    one, _ = timed(replace(BASE, gradient_accumulation=m))
    piped, _ = timed(replace(BASE, gradient_accumulation=m, pipeline_parallel=p))
    work = piped.compute_seconds - piped.bubble_seconds - piped.optimizer_seconds
    assert piped.bubble_seconds / work == pytest.approx((p - 1) / m)
    assert work == pytest.approx((one.compute_seconds - one.optimizer_seconds) / p)


def test_offload_time_is_pcie_and_cpu_adam():
    s = replace(BASE, num_gpus=8, zero_stage=2, offload=True)
    t, _ = timed(s)
    params = SPEC.total_params / 8
    adam = params * CPU_ADAM_BYTES_PER_PARAM / (ASSUMED_HOST_MEMORY_BYTES_PER_S / 8)
    grads_up = params * 2 / NODE.host_link.bytes_per_s_per_gpu
    assert t.offload_seconds == pytest.approx(adam + grads_up, rel=1e-3)  # the way down hides behind backward
    assert t.offload_total_seconds == pytest.approx(adam + 2 * grads_up, rel=1e-3)


def test_the_issue_405b_example():
    """`plan --model llama-3.1-405b --method full --gpu h100-80gb --max-gpus 512 --seq 4096
    --gradient-checkpointing`: whole 8-GPU nodes, a non-zero communication part over InfiniBand, and a ranking that
    perfect scaling cannot give (there, rent is the same on any number of GPUs)."""
    spec = get_model("llama-3.1-405b")
    setup = Setup(precision="bf16-mixed", seq_len=4096, gradient_checkpointing=True)
    p = plan(PlanRequest(spec=spec, setup=setup, gpus=(H100,), methods=("full",), max_gpus=512))
    runs = [o for o in p.options if o.runs]
    assert len(runs) >= 4
    for o in runs:
        assert o.setup.gpus % 8 == 0 and o.nodes >= 2 and o.cost.step.communication_seconds > 0
        if o.setup.tensor_parallel == 1:  # ZeRO-3 over 2+ nodes: the data-parallel ring crosses the NICs
            assert o.cost.step.links == (("data", "infiniband-ndr", 50 * 10**9),)
        else:  # tensor ranks inside the node, over NVLink
            assert ("tensor", "nvlink4-nvswitch", 450 * 10**9) in o.cost.step.links
    assert p.shortlist()["fastest"][0].kind == "tensor/pipeline"  # what every 405B recipe uses
    zero3 = next(o for o in runs if o.strategy == "zero-3")
    offload = next(o for o in runs if o.strategy == "zero-3+offload")
    assert offload.cost.step.offload_seconds > 0
    # compute alone (perfect scaling) is the same per GPU-hour for both; the exposed transfers and the CPU's Adam
    # make the offloaded option dearer
    compute = {o.strategy: o.cost.step.compute_seconds * o.setup.gpus / o.cost.step.tokens_per_step
               for o in (zero3, offload)}
    assert compute["zero-3"] == pytest.approx(compute["zero-3+offload"], rel=0.05)
    assert zero3.rent_usd < offload.rent_usd


def test_default_node_is_the_catalogues():
    assert node_for(H100) == NODE
