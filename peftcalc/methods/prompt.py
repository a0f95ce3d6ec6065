"""Soft prompts: prompt tuning (Lester et al., 2021) and p-tuning (Liu et al., 2021).

Both prepend virtual tokens to the input, so the model sees a longer sequence. peft builds one
prompt per transformer stack (2 for encoder-decoder models) and keeps it in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.model.spec import ModelSpec


def check_virtual_tokens(n: int) -> None:
    if n <= 0:
        raise PeftcalcError(f"--virtual-tokens must be a positive integer, got {n}")


@dataclass(frozen=True)
class PromptTuning:
    virtual_tokens: int = 20

    @property
    def name(self) -> str:
        return "prompt"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        check_virtual_tokens(self.virtual_tokens)
        n, d = self.virtual_tokens * spec.arch.stacks, spec.arch.token_dim
        prompt = (TensorGroup("prompt_encoder.embedding.weight", n * d, 1, True, True, shape=(n, d)),)
        saved = (TensorGroup("prompt_embeddings", n * d, 1, True, True, shape=(n, d)),)
        return Adaptation("prompt", spec, base_tensors(spec, False) + prompt, saved=saved,
                          extra_tokens=self.virtual_tokens, prompt_encoder="embedding")


@dataclass(frozen=True)
class PTuning:
    """P-tuning with peft's default MLP reparameterization (3 linear layers of width `encoder_hidden`)."""

    virtual_tokens: int = 20
    encoder_hidden: int | None = None  # peft default: the token width

    @property
    def name(self) -> str:
        return "ptuning"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        check_virtual_tokens(self.virtual_tokens)
        n, d = self.virtual_tokens * spec.arch.stacks, spec.arch.token_dim
        e = self.encoder_hidden or d
        added = (
            TensorGroup("prompt_encoder.embedding.weight", n * d, 1, True, True, shape=(n, d)),
            TensorGroup("prompt_encoder.mlp_head.0.weight", d * e, 1, True, True, shape=(e, d)),
            TensorGroup("prompt_encoder.mlp_head.0.bias", e, 1, True, True),
            TensorGroup("prompt_encoder.mlp_head.2.weight", e * e, 1, True, True, shape=(e, e)),
            TensorGroup("prompt_encoder.mlp_head.2.bias", e, 1, True, True),
            TensorGroup("prompt_encoder.mlp_head.4.weight", e * d, 1, True, True, shape=(d, e)),
            TensorGroup("prompt_encoder.mlp_head.4.bias", d, 1, True, True),
        )
        # peft saves the prompt the MLP produces, not the MLP.
        saved = (TensorGroup("prompt_embeddings", n * d, 1, True, True, shape=(n, d)),)
        return Adaptation("ptuning", spec, base_tensors(spec, False) + added, saved=saved,
                          extra_tokens=self.virtual_tokens, prompt_encoder="mlp")
