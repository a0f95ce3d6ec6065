"""Activation memory: an ESTIMATE from a stated formula (the traced backend measures the real thing).

Source: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
(arXiv:2205.05198), section 4.1, generalised to grouped-query attention, gated MLPs, frozen weights
and fused attention kernels. Per layer and token, in elements of the compute dtype:

  attention: norm input h, projection input h, q h, k and v 2*kv, attention output h -> 4h + 2kv
             eager attention also keeps the softmax (heads x keys) and its dropout/cast copy: 2 * heads * keys
  MLP:       norm input h, up-projection input h, then gated: gate, up, act(gate), product 4f; plain: 2f
  frozen linears need not keep their inputs (no weight gradient): a frozen base keeps only what attention,
             activations and norms need, plus each adapted module's input (peft runs adapters in fp32)
  checkpointing keeps each layer's input (h) and recomputes one layer at a time in backward

The loss path (logits in the compute dtype, their fp32 copy for cross-entropy, and its gradient) is
counted separately: it is often the peak for large vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.methods.base import Adaptation
from peftcalc.setup import Setup
from peftcalc.units import dtype_bytes


@dataclass(frozen=True)
class Activations:
    layer_bytes: int  # all transformer blocks together
    loss_bytes: int  # logits, their fp32 copy and gradient
    recompute_bytes: int  # one block's activations rebuilt during backward (checkpointing only)

    @property
    def total(self) -> int:
        return self.layer_bytes + self.loss_bytes + self.recompute_bytes


def _block_elements_per_token(adaptation: Adaptation, keys: int, cross: bool) -> tuple[int, int]:
    """(elements in compute dtype, elements in fp32) one block keeps per token."""
    a = adaptation.spec.arch
    h, kv, f = a.hidden_size, a.num_kv_heads * a.head_dim, a.ffn_size
    full = adaptation.method == "full"
    attn = (4 * h + 2 * kv) if full else (2 * h + 2 * kv + h)  # frozen: no projection inputs kept
    if cross:  # decoder blocks of encoder-decoder models attend twice
        attn *= 2
    mlp = (2 * h + (4 * f if a.gated_mlp else 2 * f)) if full else (h + (3 * f if a.gated_mlp else f))
    if a.num_experts:  # each token visits experts_per_token experts (balanced routing assumed)
        mlp = h + (mlp - h) * a.experts_per_token
    return attn + mlp, _adapter_inputs(adaptation) // max(1, a.num_layers)


@lru_cache(maxsize=4096)
def _adapter_inputs(adaptation: Adaptation) -> int:
    """Input elements per token of all adapted modules: peft casts them to fp32 for lora_A."""
    by_name = {l.name: l for l in adaptation.spec.linears}
    return sum(by_name[n].in_features * by_name[n].count for n in adaptation.adapted)


def _eager_elements_per_token(adaptation: Adaptation, keys: int) -> int:
    a = adaptation.spec.arch
    return 2 * a.num_heads * keys


def activation_bytes(adaptation: Adaptation, setup: Setup, compute_dtype: str) -> Activations:
    a = adaptation.spec.arch
    c = dtype_bytes(compute_dtype)
    b = setup.batch_size
    seq = setup.seq_len + adaptation.extra_tokens  # virtual tokens lengthen the input
    keys = seq + adaptation.prefix_tokens  # prefixes lengthen only the keys/values
    enc_layers = a.num_encoder_layers
    dec_layers = a.num_layers - enc_layers
    per_layer = []  # (layers, bytes per layer)
    for layers, cross in ((enc_layers, False), (dec_layers, a.kind == "encoder-decoder")):
        if not layers:
            continue
        elems, fp32_elems = _block_elements_per_token(adaptation, keys, cross)
        eager = _eager_elements_per_token(adaptation, keys) if setup.attention == "eager" else 0
        one_layer = b * seq * ((elems + eager) * c + fp32_elems * 4)
        one_layer += b * adaptation.prefix_tokens * 2 * a.num_kv_heads * a.head_dim * c
        per_layer.append((layers, one_layer))
    if setup.gradient_checkpointing:
        layer_bytes = sum(n * b * seq * a.hidden_size * c for n, _ in per_layer)
        recompute = max(one for _, one in per_layer)
    else:
        layer_bytes = sum(n * one for n, one in per_layer)
        recompute = 0
    # Logits (compute dtype), their fp32 upcast for the loss and its gradient, over the decoder's tokens.
    loss = b * setup.seq_len * a.vocab_size * (c + 4 + 4)
    return Activations(layer_bytes, loss, recompute)
