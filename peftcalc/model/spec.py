"""ModelSpec: an architecture and the exact inventory of its named weights.

The inventory uses the module names of the real `transformers` implementation (`q_proj`, `c_attn`,
`query_key_value` ...), because that is how peft selects what to adapt. Layers repeat, so each entry is a
template (`model.layers.{i}.self_attn.q_proj`) with a count; the sum over the inventory is the exact
parameter count that `transformers` builds, which tests check on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Kind = Literal["decoder", "encoder", "encoder-decoder"]
ParamKind = Literal["embedding", "norm", "position", "expert", "other", "unattributed"]


@dataclass(frozen=True)
class Linear:
    """A linear layer (nn.Linear, or GPT-2's transposed Conv1D), repeated `count` times."""

    name: str  # module path; "{i}" stands for the layer index
    in_features: int
    out_features: int
    bias: bool
    count: int = 1
    head: bool = False  # the output head: not in peft's all-linear, not quantized by QLoRA
    conv1d: bool = False  # GPT-2 style Conv1D (weight stored as in x out)
    block: str = ""  # "encoder"/"decoder" for encoder-decoder models; "" otherwise
    tied: bool = False  # weight shared with the input embedding: no parameters of its own

    @property
    def leaf(self) -> str:
        """The last name component, the one peft's target lists usually name (`q_proj`)."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        """Parameters of one instance that it owns: weight (unless tied) plus bias."""
        return (0 if self.tied else self.weight_params) + (self.out_features if self.bias else 0)

    @property
    def total_params(self) -> int:
        return self.params * self.count


@dataclass(frozen=True)
class Params:
    """Parameters that are not a linear layer: embeddings, norms, position tables, fused experts."""

    name: str
    numel: int
    kind: ParamKind
    count: int = 1
    shape: tuple[int, ...] = ()  # for matrices (embeddings, experts): factored optimizers use it

    @property
    def total_params(self) -> int:
        return self.numel * self.count


@dataclass(frozen=True)
class Architecture:
    """The shape numbers that formulas need; the inventory is the source of truth for counts."""

    family: str  # Hugging Face model_type
    kind: Kind
    hidden_size: int
    num_layers: int  # transformer blocks in total (encoder + decoder for encoder-decoder models)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    gated_mlp: bool
    tie_embeddings: bool
    norm: Literal["rmsnorm", "layernorm"]
    num_encoder_layers: int = 0  # encoder-decoder only
    num_experts: int = 0  # MoE only
    experts_per_token: int = 0
    max_positions: int | None = None
    embed_dim: int | None = None  # input embedding width when it differs from hidden_size (OPT-350m: 512)

    @property
    def token_dim(self) -> int:
        """Width of one input token embedding (what a virtual prompt token must have)."""
        return self.embed_dim if self.embed_dim is not None else self.hidden_size

    @property
    def stacks(self) -> int:
        """Transformer stacks a prompt is fed to: 2 for encoder-decoder models (peft's num_transformer_submodules)."""
        return 2 if self.kind == "encoder-decoder" else 1


@dataclass(frozen=True)
class ModelSpec:
    """A model: its architecture, its weight inventory, where it came from."""

    name: str
    arch: Architecture
    linears: tuple[Linear, ...]
    others: tuple[Params, ...]
    source: str
    hf_config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # --params N: the total the user stated. The inventory is then a representative shape (infer.py)
    # plus one "unattributed" entry holding the difference, so every sum stays exactly N.
    declared_params: int | None = None

    def __hash__(self) -> int:
        # Specs key the estimate caches; hashing every weight template on each lookup would dominate.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.arch, self.linears, self.others, self.source, self.declared_params))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def inventory_params(self) -> int:
        """Exact parameter count of the inventory (what transformers builds for this config)."""
        return sum(l.total_params for l in self.linears) + sum(p.total_params for p in self.others)

    @property
    def total_params(self) -> int:
        return self.inventory_params

    @property
    def shape_params(self) -> int:
        """Parameters of the shape alone (differs from the total only for an inferred shape)."""
        return self.inventory_params - sum(p.total_params for p in self.others if p.kind == "unattributed")

    @property
    def is_inferred(self) -> bool:
        return self.declared_params is not None

    def layer_prefixes(self) -> tuple[tuple[str, int], ...]:
        """Each stack of repeated blocks as (name prefix with "{i}", number of blocks), e.g. ("model.layers.{i}", 32)."""
        seen: dict[str, int] = {}
        for lin in self.linears:
            if "{i}" in lin.name:
                seen.setdefault(lin.name[: lin.name.index("{i}") + 3], lin.count)
        return tuple(seen.items())
