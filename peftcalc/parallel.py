"""Bytes per GPU under data parallelism and ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054, section 5).

Stage 1 partitions optimizer states (and fp32 master weights, which the paper counts with them), stage 2
also gradients, stage 3 also the weights, each over the N data-parallel ranks. `offload` keeps optimizer
states and master weights in CPU memory (ZeRO-Offload, Ren et al. 2021, arXiv:2101.06840). Activations
are per GPU: --batch is the micro-batch of one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.memory import ModelStates


def _shard(nbytes: int, ranks: int) -> int:
    return -(-nbytes // ranks)  # the last rank's partition is padded up


@dataclass(frozen=True)
class Placement:
    """Model-state bytes on one GPU, and what moved to CPU memory."""

    weight_bytes: int
    gradient_bytes: int
    master_weight_bytes: int
    optimizer_state_bytes: int
    cpu_bytes: int  # per GPU's process, in host memory


def place(states: ModelStates, num_gpus: int, zero_stage: int, offload: bool) -> Placement:
    w, g, m, s = states.weight_bytes, states.gradient_bytes, states.master_weight_bytes, states.optimizer_state_bytes
    if zero_stage >= 1:  # 0-dim states (AdamW's step) stay whole on every rank (measured with FSDP2)
        m = _shard(m, num_gpus)
        s = _shard(s - states.scalar_state_bytes, num_gpus) + states.scalar_state_bytes
    if zero_stage >= 2:
        g = _shard(g, num_gpus)
    if zero_stage >= 3:
        w = _shard(w, num_gpus)
    cpu = 0
    if offload:
        cpu, m, s = m + s, 0, 0
    return Placement(w, g, m, s, cpu)
