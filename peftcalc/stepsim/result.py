"""What the replay takes and gives, without the replay: the step's configuration, its result, and which models and
methods the hand-written replay covers. Light on purpose: an estimate whose replay is cached imports only this.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.methods.base import Adaptation
from peftcalc.stepsim.poly import Poly

OUTPUT_CHUNKS = 8  # torchtune TransformerDecoder.num_output_chunks, set by CEWithChunkedOutputLoss (8 chunks)

# model_type -> the module of stepsim/families/ that writes its forward
FAMILY_MODULES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama", "gemma2": "llama", "phi3": "llama",
    "mixtral": "llama", "gpt2": "gpt2", "t5": "t5", "mt5": "t5", "falcon": "falcon", "bloom": "bloom", "opt": "opt",
    "gpt_neox": "gpt_neox", "bert": "bert", "roberta": "bert",
}


@dataclass(frozen=True)
class StepConfig:
    """Everything about the setup that changes what is allocated, except batch and sequence sizes."""

    param_dtype: str  # "fp32", "bf16", "fp16"
    compute_dtype: str
    attention: str  # "sdpa", "eager", "flash_attention_2" or "flex_attention"
    checkpointing: bool
    adapter_dtype: str = "fp32"
    batch1: bool = False  # batch of one: ATen's matmul/reshape can view (1, H, ...) tensors it must copy for B > 1
    accumulating: bool = False  # a later micro-batch of gradient accumulation (gradients exist; new ones add in place)
    autocast: bool | None = None  # the forward under torch.autocast(compute dtype); None: when the dtypes differ
    device: str = "cpu"  # "cpu" (what the traced backend runs) or "cuda" (the GPU kernels: fused attention, masks)
    reentrant: bool = False  # torch.utils.checkpoint(use_reentrant=True): full recompute, no early stop; the first
    # forward builds no graph
    loss: str = "standard"  # "standard", "chunked" (torchtune's chunked output CE), "fused" (Liger's linear CE)
    mask: str = "none"  # the attention mask: "none" (full rows), "padded" (rows padded), "packed" (several per row)
    shift_copy: bool = False  # transformers < 4.49: the causal-LM loss copies its shifted fp32 logits
    # bitsandbytes (a quantized base): the dtype its 4-bit weights dequantize to (QuantState.dtype: the dtype the
    # model was loaded in), whether MatMul4Bit keeps its input for backward (releases before 0.43.2), whether
    # its forward dequantizes in Python (before 0.50.0) rather than inside one gemm_4bit operator
    quant_dtype: str = ""
    bnb_compute_dtype: str = ""  # BitsAndBytesConfig's bnb_4bit_compute_dtype: the loaded recipe's compute dtype
    bnb_keeps_input: bool = False
    bnb_python_dequant: bool = False

    @property
    def uses_autocast(self) -> bool:
        return self.compute_dtype != self.param_dtype if self.autocast is None else self.autocast


@dataclass(frozen=True)
class Where:
    """Where in the step a candidate moment happens. Stacks are numbered in forward order (a decoder-only model
    has one; T5 its encoder, then its decoder).

    `block`: the stack whose block runs, None outside blocks (the root's modules: embeddings, final norm, head,
    loss); `first`: that block is its stack's first (layer 0). Forward, outside blocks: `before` no block has run
    yet (embeddings), else after the last (or between stacks). Backward: `done`, per stack, how many of its blocks
    have finished their backward (all of them: the embeddings' backward; none: the loss's). `entering`: the
    moment a block is entered in forward (its input and everything before it live, none of its own tensors)."""

    phase: str  # "forward" or "backward"
    block: int | None
    first: bool = False
    before: bool = False
    done: tuple[int, ...] = ()
    entering: bool = False  # forward: the block's first moment, before any of its operators


@dataclass(frozen=True)
class Moment:
    where: Where
    live: Poly  # bytes above the step's start, every simulated and extrapolated layer included


@dataclass(frozen=True)
class SimResult:
    """Bytes above the step's starting point (weights, optimizer states, inputs), as polynomials."""

    after_forward: Poly  # live when forward returns: what autograd saved, and the loss
    forward_peaks: tuple[Poly, ...]  # candidates for the forward's peak (the largest wins at given sizes)
    backward_peaks: tuple[Poly, ...]  # same for backward (gradients of parameters included)
    gradients: Poly  # parameter gradients when backward ends (for checks: memory.py has them exactly)
    moments: tuple[Moment, ...] = ()  # every candidate, tagged (pruned within each Where)
    stack_counts: tuple[int, ...] = ()  # blocks per stack, in forward order


def replayable(adaptation: Adaptation) -> bool:
    """The hand-written replay covers this model family and this method: a family of FAMILY_MODULES with its
    hand-written inventory, and one of peftcalc's own methods (one derived from peft, such as LoHa or VeRA,
    changes the computation in ways the replay does not know)."""
    return (adaptation.spec.arch.family in FAMILY_MODULES and getattr(adaptation.spec, "derivation", None) is None
            and getattr(adaptation, "peft_type", None) is None)
