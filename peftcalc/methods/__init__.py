"""The methods, by name: each a small frozen dataclass in its own module, built from shared options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftcalc.errors import PeftcalcError
from peftcalc.methods.adapter import BottleneckAdapter
from peftcalc.methods.base import Adaptation, Method, ParamCount, TensorGroup
from peftcalc.methods.full import Full
from peftcalc.methods.ia3 import IA3
from peftcalc.methods.lora import dora, lora, qlora
from peftcalc.methods.modules_to_save import ModulesToSave
from peftcalc.methods.prefix import PrefixTuning
from peftcalc.methods.prompt import PromptTuning, PTuning

__all__ = ["Adaptation", "Method", "ParamCount", "TensorGroup", "MethodOptions", "METHODS", "make_method",
           "DEFAULT_TABLE", "RANKED"]


@dataclass(frozen=True)
class MethodOptions:
    """The CLI's method options; each method reads the ones it uses."""

    rank: int = 8
    targets: tuple[str, ...] | None = None
    virtual_tokens: int = 20
    bottleneck: int = 64
    adapter_variant: str = "houlsby"
    prefix_projection: bool = False
    quant_bits: int = 4
    quant_type: str = "nf4"  # QLoRA 4-bit: nf4 or fp4
    double_quant: bool = True  # QLoRA 4-bit: quantize the absmax again (the paper's recipe)
    quant_storage: str = "uint8"  # QLoRA 4-bit: the dtype the packed codes are stored in
    modules_to_save: tuple[str, ...] = ()  # peft's modules_to_save: trainable full copies (not for full)
    lora_dropout: float = 0.0  # peft's lora_dropout (LoRA, DoRA, QLoRA)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    source: str
    options: tuple[str, ...]
    checked_against: str  # the independent source its parameter counts are tested against
    build: Callable[[MethodOptions], Method]

    @property
    def ranked(self) -> bool:
        """Its trainable parameters grow with the LoRA rank (--rank)."""
        return any(o.startswith("--rank") for o in self.options)


_INFOS = (
    MethodInfo("full", "Full fine-tuning", "every weight trains", (), "transformers", lambda o: Full()),
    MethodInfo("lora", "LoRA", "Hu et al. 2021, arXiv:2106.09685", ("--rank", "--targets"), "peft",
               lambda o: lora(o.rank, o.targets, o.lora_dropout)),
    MethodInfo("qlora", "QLoRA", "Dettmers et al. 2023, arXiv:2305.14314 (NF4 + double quantization)",
               ("--rank", "--targets (default all-linear)", "--quant-bits 4|8", "--quant-type nf4|fp4",
                "--no-double-quant", "--quant-storage", "--lora-dropout"), "peft",
               lambda o: qlora(o.rank, o.targets, o.quant_bits, o.quant_type, o.double_quant, o.quant_storage,
                               o.lora_dropout)),
    MethodInfo("dora", "DoRA", "Liu et al. 2024, arXiv:2402.09353", ("--rank", "--targets"), "peft",
               lambda o: dora(o.rank, o.targets, o.lora_dropout)),
    MethodInfo("adapter", "Bottleneck adapters", "Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2021",
               ("--bottleneck", "--adapter-variant houlsby|pfeiffer"), "paper formula",
               lambda o: BottleneckAdapter(o.bottleneck, o.adapter_variant)),  # type: ignore[arg-type]
    MethodInfo("prompt", "Prompt tuning", "Lester et al. 2021, arXiv:2104.08691", ("--virtual-tokens",), "peft",
               lambda o: PromptTuning(o.virtual_tokens)),
    MethodInfo("prefix", "Prefix tuning", "Li & Liang 2021, arXiv:2101.00190",
               ("--virtual-tokens", "--prefix-projection"), "peft",
               lambda o: PrefixTuning(o.virtual_tokens, o.prefix_projection)),
    MethodInfo("ptuning", "P-tuning", "Liu et al. 2021, arXiv:2103.10385 (MLP reparameterization)",
               ("--virtual-tokens",), "peft", lambda o: PTuning(o.virtual_tokens)),
    MethodInfo("ia3", "IA3", "Liu et al. 2022, arXiv:2205.05638", ("--targets",), "peft", lambda o: IA3(o.targets)),
)

METHODS: dict[str, MethodInfo] = {}
for _info in _INFOS:
    if _info.name in METHODS:
        raise RuntimeError(f"method {_info.name!r} registered twice")
    METHODS[_info.name] = _info

RANKED = tuple(name for name, info in METHODS.items() if info.ranked)

# The seed document's comparison, in its order, plus p-tuning.
DEFAULT_TABLE = ("full", "lora", "qlora", "dora", "adapter", "prompt", "prefix", "ptuning", "ia3")


def make_method(name: str, options: MethodOptions = MethodOptions()) -> Method:
    try:
        info = METHODS[name]
    except KeyError:
        raise PeftcalcError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
    method = info.build(options)
    if options.modules_to_save and name != "full":  # full fine-tuning trains those modules already
        method = ModulesToSave(method, options.modules_to_save)
    return method
