"""Tensor- and pipeline-parallel options for the planner, for models FSDP alone cannot place on one node.

For each pipeline depth p (1, 2, 4, ... up to the blocks), with tensor parallelism over the node's GPUs (the
largest of 8, 4, 2 that divides the heads and the MLP width, Megatron-LM's practice: tensor ranks inside a node),
sequence parallelism on, and ZeRO-1 over the data-parallel ranks (Megatron's distributed optimizer), the fewest
data-parallel ranks that fit, in whole nodes. Pipelines run m = max(the accumulation asked, 4 p) micro-batches per
optimizer step (an ASSUMPTION, stated: a 1F1B bubble of (p - 1) / m, at most 25 %). The planner lists the
fastest of them and the one on the fewest GPUs (hardware/planner.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from peftcalc.errors import PeftcalcError
from peftcalc.hardware.nodes import Node
from peftcalc.model.spec import ModelSpec
from peftcalc.parallel import check_model_parallel
from peftcalc.setup import Setup

MICROBATCHES_PER_STAGE = 4
ZERO_STAGE = 1


def tensor_parallel_size(spec: ModelSpec, node: Node) -> int | None:
    """The tensor-parallel size inside `node`: the largest of 8, 4, 2 that fits the node and divides the model."""
    for t in (8, 4, 2):
        if t > node.gpus_per_node:
            continue
        try:
            check_model_parallel(spec, t, 1)
        except PeftcalcError:
            continue
        return t
    return None


def pipeline_depths(spec: ModelSpec, tensor_parallel: int, max_gpus: int) -> list[int]:
    depths, p = [], 1
    while p <= spec.arch.num_layers and tensor_parallel * p <= max_gpus:
        depths.append(p)
        p *= 2
    return depths


def model_parallel_setup(setup: Setup, data: int, tensor: int, pipeline: int) -> Setup:
    accumulation = max(setup.gradient_accumulation, MICROBATCHES_PER_STAGE * pipeline) if pipeline > 1 \
        else setup.gradient_accumulation
    return replace(setup, num_gpus=data, zero_stage=ZERO_STAGE, offload=False, offload_params=False,
                   tensor_parallel=tensor, pipeline_parallel=pipeline, sequence_parallel=True,
                   gradient_accumulation=accumulation)


def whole_node_data_ranks(data: int, per_replica: int, node: Node) -> int:
    """The fewest data-parallel ranks >= `data` whose GPUs fill whole nodes (any count within one node)."""
    while data * per_replica > node.gpus_per_node and (data * per_replica) % node.gpus_per_node:
        data += 1
    return data


def candidates(spec: ModelSpec, setup: Setup, node: Node, max_gpus: int,
               fits: Callable[[Setup], bool]) -> list[Setup]:
    """For each pipeline depth, the fewest data-parallel ranks on which tensor x pipeline parallelism fits."""
    t = tensor_parallel_size(spec, node)
    if t is None:
        return []
    out = []
    for p in pipeline_depths(spec, t, max_gpus):
        upper = max_gpus // (t * p)
        if upper < 1 or (t * p > node.gpus_per_node and not node.multi_node):
            continue
        if not fits(model_parallel_setup(setup, upper, t, p)):
            continue
        lo, hi = 0, upper
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(model_parallel_setup(setup, mid, t, p)) else (mid, hi)
        d = whole_node_data_ranks(hi, t * p, node)
        if d * t * p <= max_gpus:
            out.append(model_parallel_setup(setup, d, t, p))
    return out
