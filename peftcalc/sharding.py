"""What a fully sharded run (ZeRO-3 / FSDP) holds beside the activations at each moment of the step, per rank.

The replay (stepsim.replay) tags each candidate moment with where it happens (`Where`: in a block of which stack,
outside the blocks before or after them, how many blocks have finished their backward). Gathered weights and
unreduced gradients live only at some moments, so each moment gets its own: the phase peak is the largest sum.

FSDP2 (torch 2.13, torch/distributed/fsdp/_fully_shard, `fully_shard(block)` for every block, then
`fully_shard(model)`, `reshard_after_forward=True` given explicitly as accelerate and peftcalc's torchrun runs do):

- forward (`FSDPParamGroup.pre_forward`: `unshard` then `wait_for_unshard`): a block's all-gather output is
  allocated, copied out into the unsharded parameters (`foreach_all_gather_copy_out`), and then KEPT in
  `comm_ctx.all_gather_state` until the next group's `wait_for_unshard` drops it ("[Note: Overlapping all-gather
  copy-in and all-gather]"); `post_forward` reshards the block. The next group's `wait_for_unshard` binds the kept
  state to a local (`if prev_all_gather_state := ...`), so it is freed only when that function returns, after the
  copy-out: entering block i holds the root + block i-1's output + block i's output and copy (3 blocks; entering
  block 0, 2 roots + 2 blocks). Inside block i: the root's unsharded parameters
  (the root is resharded only in its own post_forward, after the loss) + block i's parameters + block i's
  all-gather output = root + 2 blocks. Before the blocks (embeddings): the root's parameters + its kept all-gather
  output = 2 roots (and, when block 0 gathers, + a block). After the blocks (final norm, head, loss): the root +
  the last block's kept all-gather output (freed in the root's `_post_forward`).
- backward (`pre_backward`: unshard (a no-op if prefetched), `wait_for_unshard` frees the all-gather output at
  once outside forward, then `_backward_prefetch` all-gathers the group before it in `post_forward_order`):
  the root is gathered again when the loss's gradient arrives (2 roots for a moment: all-gather output + copy),
  then the last block is prefetched: the loss's backward holds root + 1 block; block i holds its parameters +
  block i-1's prefetched all-gather output (block 0 prefetches nothing). `post_backward` reshards, copies the
  block's unsharded gradients into a reduce-scatter input (`foreach_reduce`), frees them, and keeps that input in
  `comm_ctx.reduce_scatter_states` until the next group's post_backward (`reduce_scatter_max_input_buffers` = 1);
  the reduced shard becomes the sharded gradient. So with d blocks done: d shards and one block's unreduced
  gradients (the last one's reduce-scatter input). The root's gradients stay unsharded until its post_backward
  in the final callback (its inputs, token ids, need no gradient): there the reduce-scatter input is allocated,
  filled and the root's gradients dropped, then the output shard allocated; measured (gloo runs): the gradient that
  arrived last, the input embeddings', is still referenced from C++ while the final callback runs, so it is live
  beside the reduce-scatter input and output.
- on gloo (the CPU runs), `ProcessGroupGloo::reduce_scatter_tensor_coalesced` reduce-scatters by cloning the input
  (`buffers.push_back(inputTensors[i].clone())`), all-reducing the clone and copying the rank's chunk out: one more
  copy of each reduce-scatter input while it runs (NCCL reduce-scatters in place).
- parameter offload (`CPUOffloadPolicy`, peftcalc/parallel.py): the shards live in CPU memory; each unit's shards are
  copied to the GPU just before its all-gather (a shard-sized transient, not counted) and each reduced shard is
  copied back and dropped: on the GPU the same moments hold no shards.
- gradient accumulation (FSDP2's default `set_requires_gradient_sync(True)`): every micro-batch reduce-scatters,
  and post_backward adds the new shard into the held one (`sharded_param.grad._local_tensor += new`): a later
  micro-batch is the first one plus the held shards.

Checked to the byte against the phase peaks of 2- and 4-rank gloo runs (bench/results/cpu-fsdp2.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.activations import Activations
from peftcalc.collectives import Unit, fsdp_units
from peftcalc.memory import tensor_bytes
from peftcalc.methods.base import Adaptation
from peftcalc.setup import Setup
from peftcalc.stepsim.replay import Where


@dataclass(frozen=True)
class StackUnits:
    """The blocks of one stack as FSDP units (unpadded: bytes per GPU never grow with more GPUs)."""

    count: int
    weight_bytes: int  # the largest block's gathered weights
    gradient_bytes: int  # the largest block's unsharded gradients
    total_gradient_bytes: int  # every block's gradients


@dataclass(frozen=True)
class Sharded:
    """The root and each stack, as FSDP units, and the ranks they are sharded over."""

    root: Unit
    stacks: tuple[StackUnits, ...]
    ranks: int
    gradients_offloaded: bool = False  # reduced shards copied to CPU memory (parameter offload)
    embedding_gradient_bytes: int = 0  # the input embeddings' gradient (the root's last), when they train
    gloo: bool = False  # reduce-scatters clone their input (ProcessGroupGloo): the CPU runs

    def shard(self, nbytes: int) -> int:
        """What of `nbytes` of reduced gradients stays on the GPU: each rank's shard, or nothing when offloaded."""
        return 0 if self.gradients_offloaded else -(-nbytes // self.ranks)

    def done_gradients(self, done: tuple[int, ...]) -> int:
        """Of the replay's gradients of the blocks done, what reduce-scatter removes (all but each rank's shard),
        less the last block's reduce-scatter input, still held."""
        removed = 0
        for s, d in zip(self.stacks, done):
            g = -(-s.total_gradient_bytes * d // s.count)
            removed += g - self.shard(g)
        held = max((s.gradient_bytes for s, d in zip(self.stacks, done) if d), default=0)
        return removed - held


def sharded_units(adaptation: Adaptation, setup: Setup, stack_counts: tuple[int, ...], device: str = "cuda"
                  ) -> Sharded | None:
    """The units in the replay's stack order; None when the inventory's stacks do not match the replay's.
    `device` "cpu": the measured runs' gloo process group."""
    units = fsdp_units(adaptation, setup.recipe, 1)
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
                                 sum(u.gradient_bytes * u.count for u in mine)))
    embeddings = {p.name for p in adaptation.spec.others if p.kind == "embedding"}
    embedding_grads = sum(tensor_bytes(g, setup.recipe) * g.count for g in adaptation.tensors
                          if g.trainable and g.name in embeddings)
    return Sharded(units[0], tuple(stacks), setup.num_gpus, setup.offload_params and setup.offload, embedding_grads,
                   device == "cpu")


def gathered_at(where: Where, s: Sharded) -> int:
    """FSDP2's unsharded weights (and kept all-gather outputs) at a moment (see the module docstring)."""
    root, stacks = s.root.weight_bytes, s.stacks
    if where.phase == "forward":
        if where.entering:  # the previous group's all-gather output is still bound (`prev_all_gather_state`)
            k = where.block
            if where.first and k == 0:
                return 2 * root + 2 * stacks[0].weight_bytes
            return root + 2 * stacks[k].weight_bytes + stacks[k - 1 if where.first else k].weight_bytes
        if where.block is not None:
            return root + 2 * stacks[where.block].weight_bytes
        return 2 * root + stacks[0].weight_bytes if where.before else root + stacks[-1].weight_bytes
    if where.block is not None:
        k = where.block
        own = stacks[k].weight_bytes
        if not where.first:
            return root + 2 * own
        return root + own + (stacks[k - 1].weight_bytes if k > 0 else 0)
    pending = [st for st, d in zip(stacks, where.done) if d < st.count]
    return root + (pending[-1].weight_bytes if pending else 0)


def fsdp2_peaks(acts: Activations, s: Sharded, start: int, placed_gradient_bytes: int) -> tuple[int, int]:
    """The forward and backward peaks (absolute bytes) of one micro-batch from the replay's tagged moments;
    `start` is what lives at the step's start, `placed_gradient_bytes` the sharded gradients at its end."""
    forward = backward = start
    for where, live in acts.moments:
        held = start + live + gathered_at(where, s)
        if where.phase == "forward":
            forward = max(forward, held)
        else:
            backward = max(backward, held - s.done_gradients(where.done))
    return forward, max(backward, _loss_arrives(acts, s, start), _root_reduced(s, start, placed_gradient_bytes))


def _loss_arrives(acts: Activations, s: Sharded, start: int) -> int:
    """Backward's first moment: the root gathered again (its all-gather output and its copy)."""
    return start + acts.after_forward_bytes + 2 * s.root.weight_bytes


def _root_reduced(s: Sharded, start: int, placed_gradient_bytes: int) -> int:
    """The root's reduce-scatter in the final callback: every block's shard, the root's reduce-scatter input and
    output, the embeddings' gradient still referenced, and gloo's clone of the input."""
    g = s.root.gradient_bytes
    if not g:
        return start
    blocks = placed_gradient_bytes - s.shard(g)
    return start + blocks + g + s.shard(g) + s.embedding_gradient_bytes + (g if s.gloo else 0)
