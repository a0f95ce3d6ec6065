"""FSDP1 (torch `FullyShardedDataParallel`, FULL_SHARD), read in torch/distributed/fsdp/_runtime_utils.py and
_flat_param.py (the same in torch 2.2-2.13, what accelerate's FSDP plugin, HF Trainer and Answer.AI's train.py run):

- each wrapped unit (a block; the root holds what no unit took: embeddings, final norm, head) owns one
  FlatParameter, padded to a multiple of the ranks; a rank keeps its shard in the parameters' dtype (fp32 when
  accelerate upcasts trainable units under mixed precision: Setup.fp32_shards). Unsharding all-gathers straight
  into `_full_param_padded` (in MixedPrecision's param_dtype), which IS the unsharded parameters' storage: there is
  no kept all-gather output as in FSDP2. With peft LoRA, HF Trainer (`_fsdp_qlora_plugin_updates`) and Answer.AI's
  `get_wrapping_policy` wrap every trainable leaf (lora_A, lora_B) as its own unit, so block units stay frozen.
- forward: `_post_forward_reshard` frees a unit after its forward, "Do not free the root's parameters in the
  post-forward for FULL_SHARD": the root stays unsharded through forward and backward. Inside block i: root +
  block i; with `forward_prefetch`, + block i+1.
- backward: `_pre_backward_hook` unshards the unit (if not prefetched) and, with BACKWARD_PRE (torch's default,
  accelerate's and fms-acceleration's setting), prefetches the next unit in backward order: root + block i +
  block i-1 (block 0: root + block 0). With BACKWARD_POST the prefetch runs in `_post_backward_reshard` after the
  unit is freed (root + 1 block); with none, root + 1 block. The loss's backward holds the root (+ the last block
  prefetched by the root's pre-backward hook with BACKWARD_PRE).
- gradients (use_orig_params=False): the parameters are views of the flat parameter (`_use_unsharded_views`), so
  their gradients wait in the split's input buffer until the unit's backward ends, then `split_with_sizes_backward`
  concatenates them into one flat gradient (the unit's gradients twice, for a moment: counted at every moment of the
  block's backward, an upper bound); `_post_backward_hook` -> `_reduce_grad` reduce-scatters it into a new shard,
  casts the shard to the parameter dtype (`_cast_grad_to_param_dtype`) and frees the unsharded one: nothing is held
  from one unit to the next. The root's flat gradient forms when the embeddings' gradient arrives, at the end.
- parameter offload (`CPUOffload(offload_params=True)`): the flat shards and `_cpu_grad` live in CPU memory; the
  GPU holds the same gathered units and unreduced gradients (peftcalc/parallel.py).
Not modelled: `_mp_shard` (each unit's shard cast to param_dtype for a moment before its all-gather),
`limit_all_gathers=False` (the CPU may then run ahead of the GPU and hold more units; accelerate, HF Trainer and
Answer.AI keep the default True: at most two all-gathers in flight), and use_orig_params=True with trainable and
frozen parameters in one unit (FSDP1 then keeps gradients for the frozen ones too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftcalc.activations import Activations
from peftcalc.stepsim.replay import Where

if TYPE_CHECKING:
    from peftcalc.sharding.units import Sharded


def gathered_at(where: Where, s: "Sharded") -> int:
    root, stacks = s.root.weight_bytes, s.stacks
    if where.phase == "forward":
        if where.block is None:
            return root
        own = stacks[where.block].weight_bytes
        return root + own + (own if s.forward_prefetch else 0)
    if where.block is None:
        pending = [st for st, d in zip(stacks, where.done) if d < st.count]
        return root + (pending[-1].weight_bytes if pending and s.backward_prefetch == "pre" else 0)
    k = where.block
    own = stacks[k].weight_bytes
    if s.backward_prefetch != "pre" or (where.first and k == 0):
        return root + own
    return root + own + (stacks[k - 1].weight_bytes if where.first else own)


def released_at(where: Where, s: "Sharded") -> int:
    """The done blocks' gradients less their shards; in a block, its flat gradient's concatenation added back."""
    concat = s.stacks[where.block].gradient_bytes if where.block is not None else 0
    return s.done_gradients(where.done) - concat


def other_moments(acts: Activations, s: "Sharded", start: int, placed_gradient_bytes: int) -> tuple[int, ...]:
    """The root's reduce-scatter at the end of backward: the blocks' shards, the root's gradients and their flat
    concatenation, and its new shard."""
    g = s.root.gradient_bytes
    if not g:
        return ()
    return (start + placed_gradient_bytes - s.shard(g) + 2 * g + s.shard(g) + (g if s.gloo else 0),)
