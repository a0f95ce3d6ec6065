"""LoRA (Hu et al., 2021), and what composes over it: DoRA's magnitude vector, QLoRA's quantized base.

Each adapted linear W (out x in) gains A (r x in) and B (out x r): r(in + out) parameters, in fp32
(peft keeps adapter weights in fp32 whatever the base dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation, TensorGroup, base_tensors
from peftcalc.methods.targets import (ALL_LINEAR, MOE_CONVERSION, PEFT_VERSION, check_mamba, default_lora_targets,
                                     peft_model_type, moe_conversion, parameter_targets, select,
                                     unmatched)
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
            if note is None and peft_model_type(spec) in MOE_CONVERSION:
                # peft 0.21: _convert_peft_config_moe turns target_modules=None into an empty set before the
                # model type's default applies, and get_peft_model raises NoMatchingPeftModuleError
                notes.append(f"peft {PEFT_VERSION} on transformers 5 cannot apply its own default targets to "
                             f"{peft_model_type(spec)} (its MoE conversion empties them); give peft "
                             f"target_modules={list(targets)} explicitly, as these counts assume")
        modules, param_suffixes = moe_conversion(spec, targets)
        if param_suffixes:
            strict = strict and targets != (ALL_LINEAR,)
        adapted = select(spec, modules, strict) if modules or not param_suffixes else ()
        notes += self._check_rank(adapted)
        check_mamba(spec, adapted)
        added = tuple(g for lin in adapted for g in self._adapter_tensors(lin))
        moe = parameter_targets(spec, param_suffixes)
        if moe:
            if self.magnitude:
                raise PeftcalcError(f"peft cannot apply DoRA to {spec.name}'s router and fused experts, which "
                                    "these targets reach; pass --targets without them (e.g. q_proj,k_proj,v_proj,o_proj)")
            added += tuple(g for p, k in moe for g in self._parameter_tensors(p, k))
            notes.append("the MoE router and fused expert tensors are adapted as parameters, as peft does on transformers "
                         "5 (their v4 linear names map onto them; rank 2r for gate_up_proj, which fuses two)")
        elif param_suffixes and not adapted:
            raise PeftcalcError(f"targets {', '.join(targets)} match nothing in {spec.name}")
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

    def _check_rank(self, adapted: tuple[Linear, ...]) -> list[str]:
        """A rank above every adapted matrix's smaller side is surely a mistake: refused. peft itself accepts any
        rank, so a rank above some modules' smaller side (a (1 x h) shared-expert gate) is only noted."""
        if not adapted:
            return []
        widest = max(adapted, key=lambda l: min(l.in_features, l.out_features))
        if self.rank > min(widest.in_features, widest.out_features):
            raise PeftcalcError(
                f"--rank {self.rank} is larger than {widest.name.replace('{i}', 'N')} "
                f"({widest.out_features}x{widest.in_features}): a rank can be at most "
                f"{min(widest.in_features, widest.out_features)}")
        narrow = sorted({l.name.replace("{i}", "N") for l in adapted if self.rank > min(l.in_features, l.out_features)})
        return [f"rank {self.rank} exceeds the smaller side of {', '.join(narrow)}; peft adapts them all the same"] \
            if narrow else []

    def _adapter_tensors(self, lin: Linear) -> tuple[TensorGroup, ...]:
        r = self.rank
        groups = (
            TensorGroup(lin.name + ".lora_A.weight", r * lin.in_features, lin.count, True, True, shape=(r, lin.in_features), layers=lin.layers),
            TensorGroup(lin.name + ".lora_B.weight", lin.out_features * r, lin.count, True, True, shape=(lin.out_features, r), layers=lin.layers),
        )
        if self.magnitude:
            groups += (TensorGroup(lin.name + ".lora_magnitude_vector", lin.out_features, lin.count, True, True, layers=lin.layers),)
        return groups

    def _parameter_tensors(self, p: Params, fused: int) -> tuple[TensorGroup, ...]:
        """peft's ParamWrapper on a router weight (out, in) or fused experts (E, out, in): lora_A (E*r', in),
        lora_B (out, E*r') with r' = fused * r. No rank limit here: peft takes any rank for the router, even
        above its E outputs."""
        experts, (out, inp) = (p.shape[0], p.shape[1:]) if len(p.shape) == 3 else (1, p.shape)
        r = self.rank * fused * experts
        return (
            TensorGroup(p.name + ".lora_A.weight", r * inp, p.count, True, True, shape=(r, inp), layers=p.layers),
            TensorGroup(p.name + ".lora_B.weight", out * r, p.count, True, True, shape=(out, r), layers=p.layers),
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
