"""LoRA (Hu et al., 2021), and what composes over it: DoRA's magnitude vector, QLoRA's quantized base.

Each adapted linear W (out x in) gains A (r x in) and B (out x r): r(in + out) parameters, in fp32
(peft keeps adapter weights in fp32 whatever the base dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.methods.targets import ALL_LINEAR, all_linear_parameters, default_lora_targets, select, unmatched
from peftcalc.model.spec import Linear, ModelSpec, Params
from peftcalc.quant import Quantization


@dataclass(frozen=True)
class Lora:
    rank: int = 8
    targets: tuple[str, ...] | None = None  # None: peft's default for the family
    magnitude: bool = False  # DoRA (Liu et al., 2024): a trainable magnitude per output feature
    quantization: Quantization | None = None  # QLoRA (Dettmers et al., 2023): a bitsandbytes-quantized base
    dropout: float = 0.0  # peft's lora_dropout (its default 0: no dropout module)

    @property
    def name(self) -> str:
        if self.quantization is not None:
            return "qlora"
        return "dora" if self.magnitude else "lora"

    def adapt(self, spec: ModelSpec) -> Adaptation:
        if self.rank <= 0:
            raise PeftcalcError(f"--rank must be a positive integer, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise PeftcalcError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        notes: list[str] = []
        targets, strict = self.targets, True
        if targets is None:
            targets, note = default_lora_targets(spec)
            strict = False
            notes += [note] if note else []
            missing = unmatched(spec, targets)
            if missing:
                notes.append(f"peft's default target(s) {', '.join(missing)} do not exist in {spec.name}; skipped as peft does")
        adapted = select(spec, targets, strict)
        for lin in adapted:
            if self.rank > min(lin.in_features, lin.out_features):
                raise PeftcalcError(
                    f"--rank {self.rank} is larger than {lin.name.replace('{i}', 'N')} "
                    f"({lin.out_features}x{lin.in_features}): a rank can be at most {min(lin.in_features, lin.out_features)}"
                )
        added = tuple(g for lin in adapted for g in self._adapter_tensors(lin))
        moe = all_linear_parameters(spec) if targets == (ALL_LINEAR,) else ()
        if moe:
            if self.magnitude:
                raise PeftcalcError(f"peft cannot apply DoRA to {spec.name}'s router and fused experts, which "
                                    "all-linear targets; pass --targets (e.g. q_proj,k_proj,v_proj,o_proj)")
            added += tuple(g for p, k in moe for g in self._parameter_tensors(p, k))
            notes.append("all-linear also adapts the MoE router and the fused expert tensors, as peft does on "
                         "transformers 5 (rank 2r for gate_up_proj, which fuses w1 and w3)")
        q = self.quantization
        tensors = base_tensors(spec, trainable=False, quantize=q) + added
        if q is not None:
            notes.append(f"base linears stored as {q.label} by bitsandbytes (as transformers' BitsAndBytesConfig "
                         "loads them); the output head, embeddings and norms are not quantized")
            if any(t.format == "dense" and t.shape and not t.added and t.name.removesuffix(".weight") in
                   {l.name for l in spec.linears if not l.head} for t in tensors):
                notes.append("linears the model keeps in fp32 (_keep_in_fp32_modules, e.g. T5's wo) stay "
                             "unquantized, as transformers leaves them")
            if any(p.kind == "expert" for p in spec.others):
                notes.append("fused MoE expert tensors are not nn.Linear in transformers 5 and stay unquantized")
        if self.dropout and self.magnitude:
            notes.append("lora_dropout with DoRA: peft recomputes the base layer on the dropped input; replayed "
                         "without the dropout")
        return Adaptation(self.name, spec, tensors, saved=added, adapted=tuple(l.name for l in adapted),
                          notes=tuple(notes), weight_decomposed=self.magnitude, quantization=q,
                          lora_dropout=0.0 if self.magnitude else self.dropout)

    def _adapter_tensors(self, lin: Linear) -> tuple[TensorGroup, ...]:
        r = self.rank
        groups = (
            TensorGroup(lin.name + ".lora_A.weight", r * lin.in_features, lin.count, True, True, shape=(r, lin.in_features)),
            TensorGroup(lin.name + ".lora_B.weight", lin.out_features * r, lin.count, True, True, shape=(lin.out_features, r)),
        )
        if self.magnitude:
            groups += (TensorGroup(lin.name + ".lora_magnitude_vector", lin.out_features, lin.count, True, True),)
        return groups

    def _parameter_tensors(self, p: Params, fused: int) -> tuple[TensorGroup, ...]:
        """peft's ParamWrapper on a router weight (out, in) or fused experts (E, out, in): lora_A (E*r', in),
        lora_B (out, E*r') with r' = fused * r. No rank limit here: peft takes any rank for the router, even
        above its E outputs."""
        experts, (out, inp) = (p.shape[0], p.shape[1:]) if len(p.shape) == 3 else (1, p.shape)
        r = self.rank * fused * experts
        return (
            TensorGroup(p.name + ".lora_A.weight", r * inp, p.count, True, True, shape=(r, inp)),
            TensorGroup(p.name + ".lora_B.weight", out * r, p.count, True, True, shape=(out, r)),
        )


def lora(rank: int = 8, targets: tuple[str, ...] | None = None, dropout: float = 0.0) -> Lora:
    return Lora(rank, targets, dropout=dropout)


def dora(rank: int = 8, targets: tuple[str, ...] | None = None, dropout: float = 0.0) -> Lora:
    return Lora(rank, targets, magnitude=True, dropout=dropout)


def qlora(rank: int = 8, targets: tuple[str, ...] | None = None, bits: int = 4, quant_type: str = "nf4",
          double_quant: bool = True, storage: str = "uint8", dropout: float = 0.0) -> Lora:
    """QLoRA: LoRA on every linear layer (the paper's recipe) over a 4-bit (NF4 with double quantization by
    default) or 8-bit (LLM.int8) bitsandbytes base."""
    q = Quantization(bits, quant_type, double_quant, storage)  # type: ignore[arg-type]
    return Lora(rank, targets if targets is not None else (ALL_LINEAR,), quantization=q, dropout=dropout)
