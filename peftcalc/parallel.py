"""Bytes per GPU under data parallelism and ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054, section 5), and the
model one GPU holds under tensor and pipeline parallelism.

Stage 1 partitions optimizer states (and fp32 master weights, which the paper counts with them), stage 2
also gradients, stage 3 also the weights, each over the N data-parallel ranks. `offload` keeps optimizer
states and master weights in CPU memory (ZeRO-Offload, Ren et al. 2021, arXiv:2101.06840). `offload_params`
(stage 3 only) also keeps each rank's weight shards and its reduced gradient shards in CPU memory, and the
optimizer steps there:

- FSDP2 `CPUOffloadPolicy` (torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_param.py: the padded shard is
  `.cpu()` (pinned) at init; `all_gather_inputs` copies it to the GPU (`.to(self.device)`) just before the
  all-gather; `foreach_reduce` copies each reduced shard to the CPU (`new_sharded_grad.to(cpu)`) and drops the GPU
  one; "the optimizer step runs on CPU with CPU optimizer states", _fsdp_api.py);
- FSDP1 `CPUOffload(offload_params=True)` (torch/distributed/fsdp/_flat_param.py: the flat shard lives on the CPU,
  `_cpu_grad` receives the reduced shard);
- DeepSpeed ZeRO-3 `offload_param` + `offload_optimizer` (deepspeed/runtime/zero/partition_parameters.py keeps
  the partitions in pinned CPU memory; stage3.py copies reduced fp32 gradient partitions to the CPU optimizer).

What stays on the GPU: buffers, the gathered units and their gradients until reduce-scattered, activations
(peftcalc/sharding.py places them per moment). Activations are per GPU: --batch is the micro-batch of one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from peftcalc.errors import PeftcalcError
from peftcalc.memory import ModelStates, model_states, tensor_bytes
from peftcalc.precision import get_precision

if TYPE_CHECKING:
    from peftcalc.activations import Activations
    from peftcalc.methods.base import Adaptation, Method
    from peftcalc.model.spec import ModelSpec
    from peftcalc.setup import Setup


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


def place(states: ModelStates, num_gpus: int, zero_stage: int, offload: bool, offload_params: bool = False
          ) -> Placement:
    """Model-state bytes per GPU (see the module docstring); `offload_params` needs stage 3 (Setup checks). FSDP
    offloads parameters, gradients and the optimizer together (one flag); DeepSpeed's `offload_param` alone leaves
    the optimizer, its fp32 states and gradient partitions on the GPU."""
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
    if offload_params:  # the weight shards; the reduced gradient shards too where the optimizer steps on the CPU
        cpu, w = cpu + w, 0
        if offload:
            cpu, g = cpu + g, 0
    return Placement(w, g, m, s, cpu)


def fp32_shard_states(adaptation: "Adaptation", states: ModelStates, setup: "Setup", kbit: bool = False
                      ) -> ModelStates:
    """Setup.fp32_shards: accelerate's FSDP under mixed precision upcasts every trainable flat parameter to fp32
    (accelerate/accelerator.py prepare_model: `param.data = param.data.to(torch.float32)` for each FSDP module whose
    flat parameter requires grad and is not fp32; accelerate >= 0.30, PR #2674; fsdp_utils.fsdp2_prepare_model
    likewise for FSDP2): trainable tensors are stored in fp32, so are their gradient shards and optimizer states,
    with no separate master copy; frozen tensors keep the recipe's dtype."""
    fp32 = model_states(adaptation, get_precision("fp32"), setup.optimizer, kbit, setup.optimizer_state_dtype)
    frozen = sum(tensor_bytes(g, setup.recipe, adaptation) * g.count for g in adaptation.tensors if not g.trainable)
    frozen32 = sum(tensor_bytes(g, get_precision("fp32"), adaptation) * g.count for g in adaptation.tensors
                   if not g.trainable)
    return replace(fp32, weight_bytes=fp32.weight_bytes - frozen32 + frozen, buffer_bytes=states.buffer_bytes)


# ---- tensor and pipeline parallelism -------------------------------------------------------------------------
# One GPU of a (tensor x pipeline)-parallel run holds one tensor shard of one pipeline stage. peftcalc models it as
# the model that shard IS (the Megatron-LM layout, Shoeybi et al. 2019 section 3): the same family with 1/t of the
# attention heads (grouped key/value heads split, or replicated when fewer than t), 1/t of the MLP width, 1/t of the
# vocabulary (vocabulary-parallel embedding, head and loss), the full hidden size (norms and the residual stream
# replicated), and ceil(L/p) blocks. Its weights, gradients, optimizer states and replayed activations are then
# exact for that model; peft's LoRA on it is LoRA under tensor parallelism (A replicated and B split on
# column-parallel layers, A split and B replicated on row-parallel ones). Stated approximations:
# - every stage is given the embedding AND the head (the first stage has one, the last the other): an upper
#   bound by one vocabulary matrix / t;
# - sequence parallelism (Korthikanti et al. 2022, arXiv:2205.05198, section 4.2.2 and Table 2) splits every
#   activation over the tensor ranks: the unsharded stage's replayed activations / t;
# - 1F1B (Narayanan et al. 2021, arXiv:2104.04473, section 2.2): the first stage keeps p micro-batches in flight,
#   so p - 1 more micro-batches of its blocks' saved activations (Korthikanti section 4.2.3) are added.

MODEL_PARALLEL_FAMILIES = frozenset({"llama", "mistral", "mixtral", "qwen2", "gemma", "gemma2", "phi3"})


def check_model_parallel(spec: "ModelSpec", tensor_parallel: int, pipeline_parallel: int) -> None:
    """Refuse, with the reason, a split the Megatron layout cannot make of this model."""
    a = spec.arch
    if a.family not in MODEL_PARALLEL_FAMILIES:
        raise PeftcalcError(f"tensor/pipeline parallelism is modelled for llama-style decoders "
                            f"({', '.join(sorted(MODEL_PARALLEL_FAMILIES))}), not {a.family}")
    t = tensor_parallel
    if a.num_heads % t or a.ffn_size % t:
        raise PeftcalcError(f"--tp {t} must divide the attention heads ({a.num_heads}) and the MLP width "
                            f"({a.ffn_size}) of {spec.name}")
    if a.num_kv_heads % t and t % a.num_kv_heads:
        raise PeftcalcError(f"--tp {t} and {a.num_kv_heads} key/value heads: one must divide the other")
    if pipeline_parallel > a.num_layers:
        raise PeftcalcError(f"--pp {pipeline_parallel} is more than the {a.num_layers} blocks of {spec.name}")


def stage_spec(spec: "ModelSpec", tensor_parallel: int, layers: int) -> "ModelSpec":
    """The model one GPU holds: 1/t of every split dimension, `layers` blocks (see the comment above)."""
    from peftcalc.model.hf_config import spec_from_config

    a, t = spec.arch, tensor_parallel
    cfg = dict(spec.hf_config)
    cfg.update(model_type=a.family, hidden_size=a.hidden_size, num_hidden_layers=layers,
               num_attention_heads=a.num_heads // t, num_key_value_heads=max(1, a.num_kv_heads // t),
               head_dim=a.head_dim, intermediate_size=a.ffn_size // t, vocab_size=-(-a.vocab_size // t))
    return spec_from_config(cfg, f"{spec.name} [1/{t} tensor shard, {layers} blocks]", spec.source)


def stage_layers(spec: "ModelSpec", pipeline_parallel: int) -> int:
    return -(-spec.arch.num_layers // pipeline_parallel)


def model_parallel_activations(spec: "ModelSpec", method: "Method", setup: "Setup", device: str = "cuda"
                               ) -> tuple["Activations", int]:
    """The replayed activations of one GPU's stage shard, and the bytes of the micro-batches 1F1B keeps in flight
    beyond the one being computed (both included in the first)."""
    from peftcalc.activations import Activations, activation_bytes

    t, p = setup.tensor_parallel, setup.pipeline_parallel
    k = stage_layers(spec, p)
    width = 1 if setup.sequence_parallel else t  # sequence parallel: the unsharded stage's activations / t
    divide = t if setup.sequence_parallel else 1
    acts = activation_bytes(method.adapt(stage_spec(spec, width, k)), setup, device=device)
    in_flight = 0
    if p > 1:
        one_more = activation_bytes(method.adapt(stage_spec(spec, width, k + 1)), setup, device=device)
        per_block = one_more.after_forward_bytes - acts.after_forward_bytes
        in_flight = -(-(p - 1) * k * per_block // divide)
    scaled = Activations(-(-acts.after_forward_bytes // divide) + in_flight,
                         -(-acts.forward_peak_bytes // divide) + in_flight,
                         -(-acts.backward_peak_bytes // divide) + in_flight,
                         -(-acts.gradient_bytes // divide))
    return scaled, in_flight
