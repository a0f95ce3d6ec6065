"""What a fine-tuning method does to a model, as data: which tensors exist, which train, how they are stored.

Every method turns a ModelSpec into an Adaptation. Everything downstream (parameter counts, weights,
gradients, optimizer states, checkpoint bytes) is computed from the Adaptation's tensor groups, so a
method states its effect once and every quantity follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

from peftcalc.model.spec import ModelSpec
from peftcalc.quant import Quantization, kept_dense

WeightFormat = Literal["dense", "nf4", "fp4", "int8"]  # how a weight is stored: dense, or bitsandbytes-quantized
PromptEncoder = Literal["embedding", "mlp"]  # where virtual tokens come from: a table, or an MLP over it


@dataclass(frozen=True)
class TensorGroup:
    """`count` tensors of `numel` elements each that share a role, trainability and weight format."""

    name: str  # parameter name template ("{i}" for the layer), as peft/transformers name it
    numel: int
    count: int
    trainable: bool
    added: bool  # created by the method (adapter weights), as opposed to a base-model weight
    format: WeightFormat = "dense"
    shape: tuple[int, ...] = ()  # 2-D or more for matrices (factored optimizers need it); () = 1-D

    @property
    def total(self) -> int:
        return self.numel * self.count


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


@dataclass(frozen=True)
class Adaptation:
    """A model after a method was applied: its tensors, and what the method changes in the computation."""

    method: str
    spec: ModelSpec
    tensors: tuple[TensorGroup, ...]
    # Tensors written to the checkpoint of one task (peft saves adapter weights only; prefix and
    # p-tuning save the reparameterized prompt, not the MLP that produced it).
    saved: tuple[TensorGroup, ...]
    save_full_model: bool = False  # full fine-tuning saves every weight in the model's dtype
    extra_tokens: int = 0  # virtual tokens prepended to the input (prompt tuning, p-tuning)
    prefix_tokens: int = 0  # key/value positions added in every attention layer (prefix tuning)
    adapted: tuple[str, ...] = ()  # module name templates the method modified
    notes: tuple[str, ...] = ()  # assumptions worth printing
    # What the method changes in the computation, for the replay, the FLOPs and the checkpoint writer:
    trains_base: bool = False  # every base weight trains (full fine-tuning)
    weight_decomposed: bool = False  # DoRA: a magnitude vector and the column norm of W + BA in every forward
    prompt_encoder: PromptEncoder | None = None  # virtual tokens from an embedding (prompt) or an MLP (p-tuning)
    saved_by_peft: bool = True  # checkpoint keys under peft's `base_model.model.` prefix (not: full, adapters)
    lora_dropout: float = 0.0  # peft's lora_dropout: an nn.Dropout on each adapted module's input to lora_A
    quantization: Quantization | None = None  # how bitsandbytes stores the quantized base (QLoRA)

    def __hash__(self) -> int:
        # Adaptations key the memory and checkpoint caches: hash the tensor list once.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.method, self.spec, self.tensors, self.saved, self.extra_tokens, self.prefix_tokens,
                      self.lora_dropout, self.quantization))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def quantized_base(self) -> bool:
        """Base weights stored quantized (QLoRA): their matmuls dequantize first."""
        return any(t.format != "dense" for t in self.tensors)

    @cached_property
    def params(self) -> ParamCount:
        return ParamCount(trainable=sum(t.total for t in self.tensors if t.trainable),
                          total=sum(t.total for t in self.tensors))


class Method(Protocol):
    """A fine-tuning method with its options (a frozen dataclass)."""

    @property
    def name(self) -> str: ...

    def adapt(self, spec: ModelSpec) -> Adaptation: ...


def base_tensors(spec: ModelSpec, trainable: bool, quantize: Quantization | None = None) -> tuple[TensorGroup, ...]:
    """The base model's tensors; with `quantize`, every linear weight transformers' bitsandbytes integration
    converts (not the head, tied weights or the model's `_keep_in_fp32_modules`: see quant.py) in that format."""
    groups: list[TensorGroup] = []
    for lin in spec.linears:
        if not lin.tied:
            converted = quantize is not None and not lin.head and not kept_dense(spec.arch.family, lin.name)
            fmt: WeightFormat = quantize.format if quantize is not None and converted else "dense"  # type: ignore
            groups.append(TensorGroup(lin.name + ".weight", lin.weight_params, lin.count, trainable and fmt == "dense",
                                      False, fmt, (lin.out_features, lin.in_features)))
        if lin.bias:
            groups.append(TensorGroup(lin.name + ".bias", lin.out_features, lin.count, trainable, False))
    for p in spec.others:
        groups.append(TensorGroup(p.name, p.numel, p.count, trainable, False, shape=p.shape))
    return tuple(groups)
