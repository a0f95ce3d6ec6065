"""Model-state bytes, exact: weights, buffers, gradients, master weights and optimizer states of an Adaptation.

Every quantity is a sum over the adaptation's tensor groups, so "total = sum of parts" holds by
construction and each part can be checked to the byte against a traced step. Besides the parameters,
the step holds:

- buffers: rotary `inv_freq` and its `original_inv_freq` copy (fp32, transformers 5), BERT's position and
  token-type ids, Gemma's `embed_scale`, and the per-weight constants of a bitsandbytes-quantized base (its
  4-bit code, the nested dynamic code and offset: quant.py) — measured: the traced "weights" are parameters,
  buffers and bitsandbytes' QuantState tensors; a quantized weight's own bytes are its packed codes plus its
  absmax (quant.quantized_bytes);
- after peft's prepare_model_for_kbit_training (`kbit`): every non-quantized parameter in fp32 (quant.py).
- torch AdamW's `step` (torch/optim/adamw.py `_init_group`) and transformers Adafactor's `RMS`: a 4-byte
  fp32 tensor per trainable tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.methods.base import Adaptation, TensorGroup
from peftcalc.model.spec import ModelSpec
from peftcalc.optim import get_optimizer
from peftcalc.precision import Precision
from peftcalc.quant import kbit_prepared, quantized_bias_dtype, quantized_bytes
from peftcalc.units import dtype_bytes

ADAM_STEP_BYTES = 4  # torch.optim.AdamW: state["step"] = torch.tensor(0.0, dtype=float32) per parameter
# Optimizers keeping a 0-dim fp32 tensor per parameter: AdamW's step, transformers Adafactor's RMS.
SCALAR_STATE_OPTIMIZERS = ("adamw", "adafactor")


@dataclass(frozen=True)
class ModelStates:
    weight_bytes: int  # parameters as stored
    gradient_bytes: int
    master_weight_bytes: int
    optimizer_state_bytes: int  # includes AdamW's per-tensor step
    buffer_bytes: int = 0  # non-parameter tensors of the model (rotary frequencies, position ids, QLoRA constants)
    stepped_bytes: int = 0  # what the optimizer steps, in its state dtype (foreach AdamW makes one such copy)
    forloop_temporary_bytes: int = 0  # the for-loop AdamW's largest scratch (see forloop_scratch)
    master_gradient_bytes: int = 0  # gradients as the optimizer step sees them (fp32 copies for master weights)
    last_cast_gradient_bytes: int = 0  # the last low-precision gradient turned into fp32 (mixed precision)
    scalar_state_bytes: int = 0  # AdamW's step / Adafactor's RMS: 0-dim, every rank keeps them whole

    @property
    def total(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.master_weight_bytes + self.optimizer_state_bytes


def tensor_bytes(g: TensorGroup, precision: Precision, adaptation: Adaptation | None = None) -> int:
    """Bytes of one tensor of the group as stored (a quantized weight: packed codes and absmax)."""
    if g.format != "dense":
        q = adaptation.quantization if adaptation is not None else None
        if q is None:
            raise ValueError(f"{g.name} is stored as {g.format} but the adaptation names no quantization")
        b = quantized_bytes(g.numel, g.shape[0] if g.shape else 1, q)
        return b.packed + b.scales
    return g.numel * dtype_bytes(precision.stored_dtype(g.added))


def buffer_bytes(adaptation: Adaptation, precision: Precision) -> int:
    """Buffers of the transformers model (measured on the meta device, transformers 5; in the dtype it was
    loaded in, which kbit preparation does not change) and the constants of each quantized weight."""
    spec = adaptation.spec
    total = family_buffer_bytes(spec, dtype_bytes(precision.param_dtype))
    q = adaptation.quantization
    for g in adaptation.tensors:
        if g.format != "dense" and q is not None:
            total += quantized_bytes(g.numel, g.shape[0] if g.shape else 1, q).constants * g.count
    return total


def family_buffer_bytes(spec: ModelSpec, param_dtype_bytes: int = 4) -> int:
    a, cfg = spec.arch, spec.hf_config
    if a.family in ("llama", "mistral", "mixtral", "qwen2", "gemma", "gemma2", "phi3", "falcon", "gpt_neox"):
        dim = a.head_dim
        if a.family == "gpt_neox":
            dim = int(a.head_dim * float(cfg.get("rotary_pct", cfg.get("partial_rotary_factor", 0.25))))
        elif a.family == "phi3":
            dim = int(a.head_dim * float(cfg.get("partial_rotary_factor", 1.0)))
        elif a.family == "falcon" and cfg.get("alibi"):
            return 0
        extra = param_dtype_bytes if a.family in ("gemma", "gemma2") else 0  # embed_scale, in the model dtype
        return 2 * (dim // 2) * 4 + extra  # inv_freq and original_inv_freq, fp32
    if a.family in ("bert", "roberta"):
        positions = int(cfg.get("max_position_embeddings") or a.max_positions or 512)
        return 2 * positions * 8  # position_ids and token_type_ids buffers, int64
    return 0


def forloop_scratch(sizes: list[int]) -> int:
    """torch's single-tensor AdamW: `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)` makes two
    tensors of the parameter's size while the previous parameter's `denom` is still bound: the most of
    2 x size(i) + size(i - 1) over the parameters in order."""
    best, prev = 0, 0
    for s in sizes:
        best = max(best, 2 * s + prev)
        prev = s
    return best


@lru_cache(maxsize=4096)
def model_states(adaptation: Adaptation, precision: Precision, optimizer: str, kbit: bool = False,
                 state_dtype: str | None = None) -> ModelStates:
    """`precision` is the recipe the model was loaded with; `kbit`: peft's prepare_model_for_kbit_training ran
    on the quantized base (every other parameter in fp32 from then on). `state_dtype` ("fp32", "bf16") keeps
    every optimizer state in that dtype (Setup.optimizer_state_dtype: an optimizer built with its own state dtype,
    e.g. torchao's AdamW with bf16 states); None: the recipe's."""
    loaded = precision
    precision = kbit_prepared(precision) if kbit and adaptation.quantized_base else precision
    opt = get_optimizer(optimizer)
    torch_adamw = optimizer in SCALAR_STATE_OPTIMIZERS
    weights = grads = master = states = stepped = master_grads = scalars = 0
    first, middle, last = [], [], []  # trainable tensor sizes in model.parameters() order, roughly
    spec = adaptation.spec
    heads = {l.name + ".weight" for l in spec.linears if l.head}
    embeddings = {p.name for p in spec.others if p.kind in ("embedding", "position")}
    norms = {p.name for p in spec.others if p.kind == "norm"}
    last_cast = head_cast = block_cast = 0
    q_biases = {t.name.removesuffix(".weight") + ".bias" for t in adaptation.tensors if t.format != "dense"}
    for g in adaptation.tensors:
        one = tensor_bytes(g, precision, adaptation)
        if g.name in q_biases and adaptation.quantization is not None:
            one = g.numel * dtype_bytes(quantized_bias_dtype(adaptation.quantization, loaded, precision))
        weights += one * g.count
        if not g.trainable:
            continue
        grads += one * g.count  # a gradient has its parameter's dtype and shape
        sdt = state_dtype or precision.state_dtype(g.added)
        state_bytes = g.numel * dtype_bytes(sdt)
        stepped += state_bytes * g.count
        (first if g.name in embeddings else last if g.name in heads else middle).extend([state_bytes] * min(g.count, 2))
        if precision.has_master(g.added):
            master += g.numel * 4 * g.count
            master_grads += g.numel * 4 * g.count
            # MasterWeightOptimizer casts gradients in model.parameters() order, each fp32 copy made while its
            # low-precision gradient still lives: the last large one decides (the output head, or for a tied head
            # the last block's last matrix; norms after it are negligible)
            if g.name in heads:
                head_cast = one
            elif g.shape and "{i}" in g.name and not g.added:
                block_cast = one
        else:
            master_grads += one * g.count
        states += opt.state_bytes(g, sdt) * g.count
        if torch_adamw:
            # one step per tensor; a norm group holds numel / hidden_size tensors (weight, and bias for LayerNorm)
            per = max(1, g.numel // spec.arch.hidden_size) if g.name in norms else 1
            states += ADAM_STEP_BYTES * g.count * per
            scalars += ADAM_STEP_BYTES * g.count * per
    last_cast = head_cast or block_cast
    states += opt.shared_state_bytes([g.numel for g in adaptation.tensors if g.trainable])
    return ModelStates(weights, grads, master, states, buffer_bytes(adaptation, loaded), stepped,
                       forloop_scratch(first + middle + last), master_grads, last_cast, scalar_state_bytes=scalars)
