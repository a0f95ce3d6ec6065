"""DeepSpeed ZeRO-3, read in deepspeed/runtime/zero/stage3.py, partitioned_param_coordinator.py and config.py
(the same mechanisms since DeepSpeed 0.10; the defaults, in elements, are Setup's DS_* constants):

- parameters are partitioned one by one (each padded to the ranks) and gathered per submodule (a Linear, an
  embedding, a norm), not per block: `fetch_sub_module` all-gathers what the running module needs and prefetches
  the next modules of the recorded trace up to `stage3_prefetch_bucket_size` elements (never past
  `stage3_max_live_parameters` gathered); `release_sub_module` frees a module's parameters after it ran unless it
  is used again within `stage3_max_reuse_distance` elements of the trace (`__params_to_release`): at the turn from
  forward to backward, the modules of the last max_reuse_distance / 2 elements stay gathered into backward (each is
  reused after twice the elements after it). Parameters of at most `stage3_param_persistence_threshold` elements
  are never partitioned (`ds_persist`): every rank holds them whole.
- gradients: `_setup_for_real_optimizer` allocates, once and for the whole run, `grad_partitions_flat_buffer`
  (this rank's partition of every trainable parameter's gradient, in `gradient_accumulation_dtype`, fp32 by
  default; in CPU memory with offload_optimizer) and, with contiguous_gradients (the default), an ipg bucket of
  `reduce_bucket_size` elements per gradient dtype; each module's gradients are copied into the bucket as they
  arrive and reduce-scattered into the partitions when it fills: the replay's gradients of the blocks done are gone.
- the optimizer steps the fp32 partitions in place from those resident gradients.

So at every moment the gathered parameters are the running module + the prefetch bucket, and at the turn the
retained modules; resident: the persistent parameters whole, the fp32 gradient partitions, the ipg bucket (in
MemoryBreakdown: weights, resident gradients, communication buffers).
Not modelled: the all-gather's flat staging buffer per fetch (`_allgather_params_coalesced`), and
`stage3_max_live_parameters` below the running module plus the prefetch bucket (it caps the prefetch only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from peftcalc.activations import Activations
from peftcalc.memory import stored_dtype, tensor_bytes
from peftcalc.methods.base import Adaptation
from peftcalc.parallel import Placement
from peftcalc.setup import Setup
from peftcalc.stepsim.result import Where
from peftcalc.units import dtype_bytes

if TYPE_CHECKING:
    from peftcalc.sharding.units import Sharded


def buckets(adaptation: Adaptation, setup: Setup) -> tuple[int, int, int]:
    """(reduce bucket, prefetch bucket, persistence threshold) in elements: the setup's, or transformers' "auto"
    values from the hidden size (Setup.ds_auto_buckets)."""
    if setup.ds_auto_buckets:
        h = adaptation.spec.arch.hidden_size
        return h * h, int(0.9 * h * h), 10 * h
    return setup.ds_reduce_bucket_size, setup.ds_prefetch_bucket_size, setup.ds_param_persistence_threshold


def _element_bytes(setup: Setup) -> int:
    return dtype_bytes(setup.recipe.param_dtype)


def fetched_bytes(adaptation: Adaptation, setup: Setup) -> int:
    """The running module (the largest partitioned tensor) and the prefetch bucket, in the stored dtype."""
    precision = setup.recipe
    _, prefetch_elements, persistence = buckets(adaptation, setup)
    largest = max((tensor_bytes(g, precision, adaptation) for g in adaptation.tensors if g.numel > persistence),
                  default=0)
    prefetch = min(prefetch_elements, setup.ds_max_live_parameters) * _element_bytes(setup)
    return largest + prefetch


def retained_bytes(adaptation: Adaptation, setup: Setup) -> int:
    """Parameters kept gathered from the end of forward into backward: the last max_reuse_distance / 2 elements
    of the trace (the head, the final norm and the last blocks' modules), in the stored dtype."""
    prefixes = [p for p, _ in adaptation.spec.layer_prefixes()]
    per_block = sum(g.numel for g in adaptation.tensors if any(g.name.startswith(p) for p in prefixes))
    outside = sum(g.total for g in adaptation.tensors if not any(g.name.startswith(p) for p in prefixes))
    return min(setup.ds_max_reuse_distance // 2, per_block + outside) * _element_bytes(setup)


def bucket_bytes(adaptation: Adaptation, setup: Setup) -> int:
    """The ipg bucket (contiguous_gradients): `reduce_bucket_size` elements per trainable gradient dtype."""
    dtypes = {stored_dtype(g, setup.recipe) for g in adaptation.tensors if g.trainable}
    return sum(buckets(adaptation, setup)[0] * dtype_bytes(d) for d in dtypes)


def placement(adaptation: Adaptation, setup: Setup, placed: Placement) -> Placement:
    """peftcalc/parallel.py's placement with ZeRO-3's own: the persistent parameters whole on every rank, and the
    gradient partitions in fp32 (`grad_partitions_flat_buffer`; in CPU memory with offload_optimizer)."""
    precision = setup.recipe
    persistence = buckets(adaptation, setup)[2]
    persistent = sum(tensor_bytes(g, precision, adaptation) * g.count for g in adaptation.tensors
                     if g.numel <= persistence)
    whole = persistent - -(-persistent // setup.num_gpus)
    grads = -(-sum(g.total for g in adaptation.tensors if g.trainable) * 4 // setup.num_gpus)
    on_cpu = placed.gradient_bytes == 0 and setup.offload
    return replace(placed, weight_bytes=placed.weight_bytes + whole, gradient_bytes=0 if on_cpu else grads,
                   cpu_bytes=placed.cpu_bytes + (grads - _recipe_gradient_shard(adaptation, setup) if on_cpu else 0))


def _recipe_gradient_shard(adaptation: Adaptation, setup: Setup) -> int:
    precision = setup.recipe
    trainable = sum(tensor_bytes(g, precision, adaptation) * g.count for g in adaptation.tensors if g.trainable)
    return -(-trainable // setup.num_gpus)


def gathered_at(where: Where, s: "Sharded") -> int:
    turn = (where.phase == "forward" and where.block is None and not where.before) or \
        (where.phase == "backward" and where.block is None and not any(where.done))
    return s.fetch_bytes + (s.retained_bytes if turn else 0)


def released_at(where: Where, s: "Sharded") -> int:
    """Every gradient of the blocks done is in the resident partitions (counted at the start)."""
    return sum(-(-st.total_gradient_bytes * d // st.count) for st, d in zip(s.stacks, where.done))


def other_moments(acts: Activations, s: "Sharded", start: int, placed_gradient_bytes: int) -> tuple[int, ...]:
    return ()
