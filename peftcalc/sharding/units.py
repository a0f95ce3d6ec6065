"""The units a fully sharded run shards and gathers (the root and each stack's blocks), with each implementation's
knobs: the shared input of peftcalc/sharding/fsdp2.py, fsdp1.py and deepspeed.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftcalc.memory import tensor_bytes
from peftcalc.methods.base import Adaptation
from peftcalc.setup import Setup
from peftcalc.units import dtype_bytes

if TYPE_CHECKING:
    from peftcalc.collectives import Unit


@dataclass(frozen=True)
class StackUnits:
    """The blocks of one stack as FSDP units (unpadded: bytes per GPU never grow with more GPUs)."""

    count: int
    weight_bytes: int  # the largest block's gathered weights
    gradient_bytes: int  # the largest block's unsharded gradients
    total_gradient_bytes: int  # every block's gradients
    frozen_bytes: int = 0  # the largest block's frozen weights


@dataclass(frozen=True)
class Sharded:
    """The root and each stack as units, the ranks they are sharded over, and the implementation's knobs."""

    impl: str  # Setup.sharding_impl: "fsdp2", "fsdp1", "deepspeed"
    root: Unit
    stacks: tuple[StackUnits, ...]
    ranks: int
    gradients_offloaded: bool = False  # reduced shards copied to CPU memory (parameter offload)
    embedding_gradient_bytes: int = 0  # the input embeddings' gradient (the root's last), when they train
    gloo: bool = False  # reduce-scatters clone their input (ProcessGroupGloo): the CPU runs
    backward_prefetch: str = "pre"  # FSDP1's BackwardPrefetch
    forward_prefetch: bool = False  # FSDP1's forward_prefetch
    fetch_bytes: int = 0  # DeepSpeed ZeRO-3: the parameters gathered at any moment (deepspeed.fetched_bytes)
    retained_bytes: int = 0  # DeepSpeed ZeRO-3: kept gathered from forward into backward (deepspeed.retained_bytes)
    # (both set by peftcalc.sharding.units_for)
    widen: int = 1  # reduced shards are cast to a dtype this many times wider (fp32 shards of 16-bit gradients)
    # FSDP1 with peft's wrap policy: every trainable leaf inside the blocks (lora_A, lora_B) is its own unit, so the
    # block units hold the frozen weights only (StackUnits.frozen_bytes)
    leaf_units: bool = False

    def shard(self, nbytes: int) -> int:
        """What of `nbytes` of reduced gradients stays on the GPU: each rank's shard (in the shards' dtype), or
        nothing when offloaded."""
        return 0 if self.gradients_offloaded else -(-nbytes * self.widen // self.ranks)

    def done_gradients(self, done: tuple[int, ...]) -> int:
        """Of the replay's gradients of the blocks done, the bytes reduce-scatter replaced by each rank's shard."""
        removed = 0
        for s, d in zip(self.stacks, done):
            g = -(-s.total_gradient_bytes * d // s.count)
            removed += g - self.shard(g)
        return removed


def sharded_units(adaptation: Adaptation, setup: Setup, stack_counts: tuple[int, ...], device: str = "cuda"
                  ) -> Sharded | None:
    """The units in the replay's stack order; None when the inventory's stacks do not match the replay's.
    `device` "cpu": the measured runs' gloo process group."""
    precision = setup.recipe
    from peftcalc.collectives import fsdp_units  # sharded runs only: not on the everyday estimate's import path

    units = fsdp_units(adaptation, precision, 1)
    names: list[str] = []
    for u in units[1:]:
        if u.name not in names:
            names.append(u.name)
    if len(names) != len(stack_counts):
        return None
    stacks = []
    for name, count in zip(names, stack_counts):
        mine = [u for u in units[1:] if u.name == name]
        if sum(u.count for u in mine) != count:
            return None
        stacks.append(StackUnits(count, max(u.weight_bytes for u in mine), max(u.gradient_bytes for u in mine),
                                 sum(u.gradient_bytes * u.count for u in mine),
                                 max(u.weight_bytes - u.gradient_bytes for u in mine)))
    embeddings = {p.name for p in adaptation.spec.others if p.kind == "embedding"}
    embedding_grads = sum(tensor_bytes(g, precision, adaptation) * g.count for g in adaptation.tensors
                          if g.trainable and g.name in embeddings)
    widen = 4 // dtype_bytes(precision.param_dtype) if setup.fp32_shards else 1
    # peft's fsdp_auto_wrap_policy (what HF Trainer installs for LoRA) and Answer.AI's lambda policy wrap a leaf whose
    # weight trains: adapters' leaves, never a block's own Linear under full fine-tuning
    leaves = setup.sharding_impl == "fsdp1" and any(g.trainable and g.added for g in adaptation.tensors)
    return Sharded(setup.sharding_impl, units[0], tuple(stacks), setup.num_gpus, setup.offload_params and setup.offload,
                   embedding_grads, device == "cpu", setup.fsdp_backward_prefetch, setup.fsdp_forward_prefetch,
                   widen=widen, leaf_units=leaves)
