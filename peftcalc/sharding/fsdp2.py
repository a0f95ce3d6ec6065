"""FSDP2 (torch 2.13, torch/distributed/fsdp/_fully_shard, `fully_shard(block)` for every block, then
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

from typing import TYPE_CHECKING

from peftcalc.activations import Activations
from peftcalc.stepsim.result import Where

if TYPE_CHECKING:
    from peftcalc.sharding.units import Sharded


def gathered_at(where: Where, s: "Sharded") -> int:
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


def released_at(where: Where, s: "Sharded") -> int:
    """The replay's gradients of the blocks done, less each rank's shard and the last reduce-scatter input held."""
    held = max((st.gradient_bytes for st, d in zip(s.stacks, where.done) if d), default=0)
    return s.done_gradients(where.done) - held


def other_moments(acts: Activations, s: "Sharded", start: int, placed_gradient_bytes: int) -> tuple[int, ...]:
    """FSDP2's moments the replay has no event for: the loss's gradient arriving (the root gathered again: its
    all-gather output and its copy), and the root's reduce-scatter in the final callback (every block's shard, the
    root's reduce-scatter input and output, the embeddings' gradient still referenced, gloo's clone)."""
    loss_arrives = start + acts.after_forward_bytes + 2 * s.root.weight_bytes
    g = s.root.gradient_bytes
    if not g:
        return (loss_arrives,)
    blocks = placed_gradient_bytes - s.shard(g)
    reduced = start + blocks + g + s.shard(g) + s.embedding_gradient_bytes + (g if s.gloo else 0)
    return loss_arrives, reduced
