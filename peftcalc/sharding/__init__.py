"""What a fully sharded run (ZeRO-3 / FSDP) holds beside the activations at each moment of the step, per rank.

The replay (stepsim.replay) tags each candidate moment with where it happens (`Where`: in a block of which stack,
entering it, outside the blocks before or after them, how many blocks have finished their backward). Gathered
weights and unreduced gradients live only at some moments, so each moment gets its own: a phase peak is the largest
sum of start + replayed live bytes + what the implementation holds there. One module per implementation, each
sourced from its code: `fsdp2` (torch `fully_shard`, measured to the byte on gloo), `fsdp1` (torch
`FullyShardedDataParallel`'s flat parameters), `deepspeed` (ZeRO-3's per-module fetching, buckets and resident
gradient partitions).
"""

from __future__ import annotations

from peftcalc.activations import Activations
from peftcalc.sharding import deepspeed, fsdp1, fsdp2
from dataclasses import replace

from peftcalc.methods.base import Adaptation
from peftcalc.setup import Setup
from peftcalc.sharding.units import Sharded, StackUnits, sharded_units

__all__ = ["Sharded", "StackUnits", "units_for", "phase_peaks", "deepspeed", "fsdp1", "fsdp2"]
IMPLEMENTATIONS = {"fsdp2": fsdp2, "fsdp1": fsdp1, "deepspeed": deepspeed}


def units_for(adaptation: Adaptation, setup: Setup, stack_counts: tuple[int, ...], device: str = "cuda"
              ) -> Sharded | None:
    """The sharded units of this setup's implementation (None when the replay's stacks do not match)."""
    s = sharded_units(adaptation, setup, stack_counts, device)
    if s is None or s.impl != "deepspeed":
        return s
    return replace(s, fetch_bytes=deepspeed.fetched_bytes(adaptation, setup),
                   retained_bytes=deepspeed.retained_bytes(adaptation, setup))


def phase_peaks(acts: Activations, s: Sharded, start: int, placed_gradient_bytes: int) -> tuple[int, int]:
    """The forward and backward peaks (absolute bytes) of one micro-batch from the replay's tagged moments;
    `start` is what lives at the step's start, `placed_gradient_bytes` the sharded gradients at its end."""
    impl = IMPLEMENTATIONS[s.impl]
    forward = backward = start
    for where, live in acts.moments:
        held = start + live + impl.gathered_at(where, s)
        if where.phase == "forward":
            forward = max(forward, held)
        else:
            backward = max(backward, held - impl.released_at(where, s))
    return forward, max((backward, *impl.other_moments(acts, s, start, placed_gradient_bytes)))
