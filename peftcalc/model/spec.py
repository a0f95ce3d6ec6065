"""ModelSpec: an architecture and the exact inventory of its named weights.

The inventory uses the module names of the real `transformers` implementation (`q_proj`, `c_attn`,
`query_key_value` ...), because that is how peft selects what to adapt. Layers repeat, so each entry is a
template (`model.layers.{i}.self_attn.q_proj`) with a count; the sum over the inventory is the exact
parameter count that `transformers` builds, which tests check on the meta device.

A template stands for layers 0 .. count-1 unless it names its layers: heterogeneous stacks (hybrid
attention / Mamba layers, dense-then-MoE layers as in DeepSeek-V3) give each template the explicit set of
layer indices where it exists (`layers`), so counts, checkpoint names and the number of blocks stay exact.

Each tensor's dtype follows the training recipe unless its template says otherwise (`dtype`, see
DTYPE_RULES): transformers keeps some modules in fp32 when loading in half precision
(`_keep_in_fp32_modules_strict`, and `_keep_in_fp32_modules` under fp16), and some buffers have a fixed dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Kind = Literal["decoder", "encoder", "encoder-decoder"]
ParamKind = Literal["embedding", "norm", "position", "expert", "other", "unattributed", "buffer"]
Scope = Literal["text", "full"]  # multimodal checkpoints: the language model alone, or every tower

# How a tensor's dtype is decided. "" : the recipe decides (base weights in its parameter dtype, adapter
# weights in its adapter dtype); "model": the recipe's parameter dtype, also for a tensor a method adds;
# FP32_UNDER_FP16: fp32 when the model is loaded in fp16, else the parameter dtype (transformers'
# `_keep_in_fp32_modules`); any dtype of units.DTYPE_BYTES: always that dtype (fp32 for
# `_keep_in_fp32_modules_strict`, rotary frequencies; int64 for position ids).
FP32_UNDER_FP16 = "fp32-under-fp16"


def resolve_dtype(rule: str, param_dtype: str, default: str) -> str:
    """The dtype a tensor with this rule has when the model's parameters are `param_dtype`; `default` is the
    recipe's own choice for the tensor (used when the rule is "")."""
    if not rule:
        return default
    if rule == "model":
        return param_dtype
    if rule == FP32_UNDER_FP16:
        return "fp32" if param_dtype == "fp16" else param_dtype
    return rule


def layer_indices(layers: tuple[int, ...], count: int) -> tuple[int, ...] | range:
    """The layer indices a template stands for: its explicit `layers`, else 0 .. count-1."""
    return layers if layers else range(count)


def expand_name(template: str, layers: tuple[int, ...], count: int) -> list[str]:
    """Every concrete name of a template ("model.layers.{i}.mlp" over its layer indices)."""
    if "{i}" not in template:
        return [template]
    return [template.replace("{i}", str(i)) for i in layer_indices(layers, count)]


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
    layers: tuple[int, ...] = ()  # the layer indices "{i}" takes, when not 0 .. count-1 (len == count)
    dtype: str = ""  # see DTYPE rules above; "" = the recipe's

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
    layers: tuple[int, ...] = ()  # the layer indices "{i}" takes, when not 0 .. count-1 (len == count)
    dtype: str = ""  # see DTYPE rules above; "" = the recipe's

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
    # Layers with softmax attention over the keys (full, sliding or chunked); None: every layer. Hybrid
    # models (linear attention, Mamba) have fewer, and attention FLOPs scale with these only.
    attention_layers: int | None = None

    @property
    def token_dim(self) -> int:
        """Width of one input token embedding (what a virtual prompt token must have)."""
        return self.embed_dim if self.embed_dim is not None else self.hidden_size

    @property
    def stacks(self) -> int:
        """Transformer stacks a prompt is fed to: 2 for encoder-decoder models (peft's num_transformer_submodules)."""
        return 2 if self.kind == "encoder-decoder" else 1


@dataclass(frozen=True)
class Derivation:
    """Where a derived inventory came from: transformers built the model of a config on the meta device
    (peftcalc/measure/derive.py) and its parameters, buffers and config were read off it."""

    key: str  # the inventory's cache key (peftcalc/model/derived.py: config content, scope, transformers version)
    config_sha256: str  # of the config as given (canonical JSON)
    scope: Scope  # text: the language model and its head; full: every tower of a multimodal checkpoint
    model_class: str  # the transformers class built, e.g. "Qwen3ForCausalLM"
    model_type: str  # of the config built (the text config's for a text-only multimodal build)
    transformers_version: str
    multimodal: bool  # the config has towers besides the language model
    notes: tuple[str, ...] = ()  # what the inventory leaves out or assumes (scope, quantized checkpoints, MTP layers)
    # The config transformers built from, class defaults filled in (PretrainedConfig.to_dict()).
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


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
    # Non-parameter tensors (derived inventories only; the hand-written families' buffers are in memory.py).
    buffers: tuple[Params, ...] = ()
    # Derived inventories: how transformers built them (None for hand-written families and --params shapes).
    derivation: Derivation | None = None

    def __hash__(self) -> int:
        # Specs key the estimate caches; hashing every weight template on each lookup would dominate.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.arch, self.linears, self.others, self.source, self.declared_params,
                      self.buffers, self.derivation))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def origin(self) -> Literal["family", "derived", "inferred"]:
        """Where the inventory came from: a hand-written family builder (model/families/), a model transformers
        built from the config (derived), or a shape inferred from --params."""
        if self.derivation is not None:
            return "derived"
        return "inferred" if self.is_inferred else "family"

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
        """Each stack of repeated blocks as (name prefix with "{i}", number of blocks), e.g. ("model.layers.{i}", 32).
        A stack's blocks are the union of its templates' layer indices (blocks of a hybrid stack differ)."""
        seen: dict[str, set[int]] = {}
        for t in (*self.linears, *self.others):
            if "{i}" in t.name:
                seen.setdefault(t.name[: t.name.index("{i}") + 3], set()).update(layer_indices(t.layers, t.count))
        return tuple((prefix, len(indices)) for prefix, indices in seen.items())
