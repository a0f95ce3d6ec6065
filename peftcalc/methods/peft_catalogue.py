"""peft's tuner types as data, without torch: which peftcalc derives from peft itself (PEFT_METHODS, with the paper
peft's source cites), which are peft's names for peftcalc's own methods (ALIASES), which cannot be sized from a
config (REFUSED, with the reason); and the request that keys one derived adaptation (PeftRequest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADAPTATION_FORMAT = 1


@dataclass(frozen=True)
class PeftMethodInfo:
    name: str  # peft's PeftType, lower case
    title: str
    source: str  # the paper peft's own source cites for it, else the peft module
    prompt: bool = False  # a prompt-learning method: --virtual-tokens sets num_virtual_tokens
    note: str = ""  # what the user must or may pass
    required: tuple[str, ...] = ()  # peft config fields without a usable default: --peft-option must give them


def _p(name: str, title: str, paper: str = "", **kw: Any) -> PeftMethodInfo:
    src = f"{paper}; " if paper else ""
    return PeftMethodInfo(name, title, f"{src}peft/tuners/{name}", **kw)


# Every peft tuner type (peft 0.21.2 PeftType) that builds on the meta device from a causal LM's config; the papers
# are those peft's source files cite (huggingface.co/papers/<arXiv id>). tests/methods/test_peft_derived.py checks
# this list against the installed peft: every type is here, an alias, or refused (REFUSED).
PEFT_METHODS: dict[str, PeftMethodInfo] = {i.name: i for i in (
    _p("adalora", "AdaLoRA", "Zhang et al. 2023, https://openreview.net/forum?id=lq62uWRJjiY",
       note="needs --peft-option total_step=N (the length of its rank schedule)", required=("total_step",)),
    _p("adaption_prompt", "LLaMA-Adapter (adaption prompt)", "https://huggingface.co/papers/2303.16199",
       note="needs --peft-option adapter_len=N and adapter_layers=N (prompt length, adapted top layers)",
       required=("adapter_len", "adapter_layers")),
    _p("beft", "BEFT", "https://arxiv.org/abs/2509.15974"),
    _p("boft", "BOFT (butterfly orthogonal)", "https://huggingface.co/papers/2311.06243"),
    _p("c3a", "C3A (circular convolution)", "https://huggingface.co/papers/2407.19342"),
    _p("cartridge", "Cartridges (trained KV cache)", prompt=True),
    _p("cpt", "CPT (context-aware prompt tuning)", "https://huggingface.co/papers/2410.17222"),
    _p("deft", "DeFT"),
    _p("delora", "DeLoRA", "https://huggingface.co/papers/2503.18225"),
    _p("fourierft", "FourierFT", "https://huggingface.co/papers/2405.03003"),
    _p("glora", "GLoRA"),
    _p("gralora", "GraLoRA"),
    _p("hira", "HiRA"),
    _p("hra", "HRA (Householder reflections)", "https://huggingface.co/papers/2405.17484"),
    _p("lily", "Lily", "https://arxiv.org/abs/2407.09946"),
    _p("ln_tuning", "LayerNorm tuning", "https://huggingface.co/papers/2312.11420"),
    _p("loha", "LoHa", "https://huggingface.co/papers/2108.06098"),
    _p("lokr", "LoKr", "https://huggingface.co/papers/2309.14859"),
    _p("miss", "MiSS (formerly Bone)", "https://huggingface.co/papers/2409.15371"),
    _p("multitask_prompt_tuning", "Multitask prompt tuning", "https://huggingface.co/papers/2303.02861", prompt=True),
    _p("oft", "OFT (orthogonal fine-tuning)", "https://huggingface.co/papers/2306.07280"),
    _p("osf", "OSF (orthogonal subspace fine-tuning)"),
    _p("peanut", "PEANuT", "https://arxiv.org/abs/2410.01870"),
    _p("poly", "Polytropon", "https://huggingface.co/papers/2202.13914"),
    _p("psoft", "PSOFT", "https://openreview.net/forum?id=FSHrinMArK"),
    _p("pvera", "PVeRA", "https://arxiv.org/abs/2512.07703"),
    _p("randlora", "RandLoRA", "https://huggingface.co/papers/2502.00987"),
    _p("road", "RoAd (2D rotary adaptation)", "https://huggingface.co/papers/2409.00119"),
    _p("shadow", "Shadow"),
    _p("shira", "SHiRA (sparse high-rank adapters)",
       note="its random mask is drawn on the CPU (peft draws it on the weight's device, where meta tensors cannot count "
            "their nonzeros); the count is peft's: r(m+n) weights per module"),
    _p("supertuning", "SuperTuning", "https://arxiv.org/abs/2607.09287"),
    _p("tinylora", "TinyLoRA", "https://arxiv.org/abs/2602.04118"),
    _p("trainable_tokens", "Trainable tokens", note="needs --peft-option token_indices=[...] (the tokens to train)",
       required=("token_indices",)),
    _p("unilora", "UniLoRA", "https://arxiv.org/abs/2506.00799"),
    _p("vblora", "VB-LoRA (vector bank)", "https://huggingface.co/papers/2405.15179"),
    _p("vera", "VeRA (shared random projections)", "https://huggingface.co/papers/2310.11454"),
    _p("waveft", "WaveFT (wavelet fine-tuning)"),
)}

# peft names of methods peftcalc computes itself, and peft's former names.
ALIASES: dict[str, str] = {"prompt_tuning": "prompt", "p_tuning": "ptuning", "prefix_tuning": "prefix",
                           "bone": "miss"}

# peft tuner types that cannot be derived from a config alone, and why.
REFUSED: dict[str, str] = {
    "adamss": "its parameter shapes come from k-means clustering of the base weights (scikit-learn), which needs "
              "the real weights",
    "frod": "its projections are an SVD of the base weights, which needs the real weights",
    "xlora": "it mixes LoRA adapters already trained (it loads their checkpoints), so it has nothing of its own to "
             "size from a config",
}


@dataclass(frozen=True)
class PeftRequest:
    """What a derived adaptation depends on besides the model: peft's method name, `r` (None: peft's default),
    --targets, --peft-option KEY=VALUE pairs (VALUE read as JSON when it parses), the virtual tokens of
    prompt-learning methods."""

    peft_type: str
    rank: int | None = None
    targets: tuple[str, ...] | None = None
    options: tuple[tuple[str, str], ...] = ()
    virtual_tokens: int = 20

    @property
    def info(self) -> PeftMethodInfo:
        return PEFT_METHODS[self.peft_type]

    def key_data(self, model_key: str) -> dict[str, Any]:
        """Everything the derived adaptation depends on (its cache key hashes this with the peft version)."""
        return {"format": ADAPTATION_FORMAT, "model": model_key, "peft_type": self.peft_type, "rank": self.rank,
                "targets": list(self.targets) if self.targets else None,
                "options": [list(kv) for kv in self.options],
                "virtual_tokens": self.virtual_tokens if self.info.prompt else None}
