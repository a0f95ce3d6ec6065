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
  accelerate's and fms-acceleration's setting), prefetches the unit before it in post-forward order
  (`_ExecOrderData.get_handle_to_backward_prefetch`): block i-1 when blocks are the only units (root + 2 blocks;
  block 0: root + block 0); with trainable leaves as units (peft's policy) the unit before a block is its own last
  leaf (they finish forward inside it), so no block is prefetched (root + 1 block: measured). With BACKWARD_POST the
  prefetch runs in `_post_backward_reshard` after the unit is freed (root + 1 block); with none, root + 1 block.
  The loss's backward holds the root + the last block (the unit before the root in post-forward order, with
  BACKWARD_PRE).
- the optimizer sees one flat parameter per unit: AdamW's per-tensor `step` states are one per unit.
- gradients (use_orig_params=False): the parameters are views of the flat parameter (`_use_unsharded_views`), so
  their gradients wait in the split's input buffer until the unit's backward ends, then `split_with_sizes_backward`
  concatenates them into one flat gradient (the unit's gradients twice, for a moment, after the block's activations
  are freed: below the block's own peaks, measured); `_post_backward_hook` -> `_reduce_grad` reduce-scatters it
  into a new shard, casts the shard to the parameter dtype (`_cast_grad_to_param_dtype`) and frees the unsharded
  one: nothing is held from one unit to the next. The root's flat gradient forms when the embeddings' gradient
  arrives, at the end.
- parameter offload (`CPUOffload(offload_params=True)`): the flat shards and `_cpu_grad` live in CPU memory; the
  GPU holds the same gathered units and unreduced gradients (peftcalc/parallel.py), and `FlatParamHandle.pre_unshard`
  copies each unit's shard to the GPU (`flat_param_to(self.device)`), kept as `flat_param.data` until the unit is
  resharded (`_use_sharded_flat_param`): 1/ranks more for every unsharded unit, the root's all step.
Checked on 2- and 4-rank gloo runs (bench/results/cpu-fsdp1.jsonl, `device_id=cpu`). Not modelled: `_mp_shard` (each unit's shard cast to param_dtype for a moment before its all-gather),
`limit_all_gathers=False` (the CPU may then run ahead of the GPU and hold more units; accelerate, HF Trainer and
Answer.AI keep the default True: at most two all-gathers in flight), and use_orig_params=True with trainable and
frozen parameters in one unit (FSDP1 then keeps gradients for the frozen ones too).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from peftcalc.activations import Activations
from peftcalc.memory import ADAM_STEP_BYTES, SCALAR_STATE_OPTIMIZERS, ModelStates
from peftcalc.methods.base import Adaptation
from peftcalc.parallel import Placement
from peftcalc.setup import Setup
from peftcalc.stepsim.result import Where

if TYPE_CHECKING:
    from peftcalc.sharding.units import Sharded


def gathered_at(where: Where, s: "Sharded") -> int:
    gathered = _gathered(where, s)
    if s.gradients_offloaded:  # each unsharded unit also holds its shard's GPU copy (`flat_param_to` in pre_unshard)
        gathered += -(-gathered // s.ranks)
    return gathered


def _gathered(where: Where, s: "Sharded") -> int:
    root, stacks = s.root.weight_bytes, s.stacks
    if where.phase == "forward":
        if where.block is None:
            return root
        own = _own(s, where.block)
        return root + own + (own if s.forward_prefetch else 0)
    if where.block is None:  # the root's pre-backward prefetches the unit before it in post-forward order
        pending = [k for k, (st, d) in enumerate(zip(stacks, where.done)) if d < st.count]
        return root + (_own(s, pending[-1]) if pending and s.backward_prefetch == "pre" else 0)
    k = where.block
    own = _own(s, k)
    if s.backward_prefetch != "pre" or s.leaf_units or (where.first and k == 0):
        return root + own
    return root + own + (_own(s, k - 1) if where.first else own)


def _own(s: "Sharded", k: int) -> int:
    """A block unit's gathered weights: without its trainable leaves when they are units of their own."""
    st = s.stacks[k]
    return st.frozen_bytes if s.leaf_units else st.weight_bytes


def released_at(where: Where, s: "Sharded") -> int:
    """The done blocks' gradients less their shards."""
    return s.done_gradients(where.done)


def other_moments(acts: Activations, s: "Sharded", start: int, placed_gradient_bytes: int) -> tuple[int, ...]:
    """The root's gradients at the end of backward: their flat concatenation (the parts and the flat gradient),
    then its reduce-scatter (the flat gradient, the new shard, the embeddings' gradient still referenced as in
    FSDP2 (measured), gloo's clone of the input)."""
    g = s.root.gradient_bytes
    if not g:
        return ()
    blocks = start + placed_gradient_bytes - s.shard(g)
    return blocks + 2 * g, blocks + g + s.shard(g) + s.embedding_gradient_bytes + (g if s.gloo else 0)


def placement(adaptation: Adaptation, setup: Setup, states: ModelStates, placed: Placement) -> Placement:
    """The optimizer sees one flat parameter per unit (use_orig_params=False): AdamW's 0-dim `step` states are one
    per trainable unit, not per tensor. Units: each block and the root when their weights train (full fine-tuning);
    with trainable leaves as units (peft's policy) one per trainable tensor, as without FSDP."""
    if setup.optimizer not in SCALAR_STATE_OPTIMIZERS or any(g.trainable and g.added for g in adaptation.tensors):
        return placed
    prefixes = [(p, c) for p, c in adaptation.spec.layer_prefixes()]
    trained = [g for g in adaptation.tensors if g.trainable]
    units = sum(c for p, c in prefixes if any(g.name.startswith(p) for g in trained))
    units += any(not any(g.name.startswith(p) for p, _ in prefixes) for g in trained)
    scalars = ADAM_STEP_BYTES * units
    if placed.optimizer_state_bytes:
        return replace(placed, optimizer_state_bytes=placed.optimizer_state_bytes - states.scalar_state_bytes + scalars)
    return replace(placed, cpu_bytes=placed.cpu_bytes - states.scalar_state_bytes + scalars)
