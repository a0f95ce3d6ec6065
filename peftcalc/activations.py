"""Activation memory and the transient peaks of forward and backward, from what the real code allocates.

Not a textbook formula: `peftcalc.stepsim` replays the transformers + peft training step of the model's
family operator by operator (what each saves for backward, which copies and casts it makes, what each
derivative allocates, in the order torch's autograd engine runs them), on symbolic tensors whose sizes are
polynomials in batch B, sequence S, stream tokens T (S plus prompt tokens), keys K (T plus prefix tokens)
and prefix length P. Every term names its source there (a transformers/peft function, an ATen kernel or
a derivative formula of torch's derivatives.yaml), and `peftcalc validate` checks the result against the
traced steps committed in bench/results/.

The replay runs once per model, method, dtypes, attention kernel and checkpointing (cached, ~10-50 ms);
each batch and sequence length then costs a few polynomial evaluations.

All numbers are bytes above the step's starting point (weights, buffers, optimizer states, master weights
and the input batch):

- `after_forward`: live when the forward returns: what autograd saved for backward, and the loss;
- `forward_peak`: the most live during forward (often inside the loss: the logits, their fp32 copy and
  the log-softmax);
- `backward_peak`: the most live during backward, parameter gradients included as they appear (often
  the loss's backward, three fp32 vocabulary-wide tensors, or the last layers with all gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from peftcalc.methods.base import Adaptation
from peftcalc.kbit import kbit_preparation_applies
from peftcalc.quant import kbit_prepared, keeps_4bit_input, python_dequant_forward
from peftcalc.setup import Setup, version_tuple
from peftcalc.stepsim.model import StepConfig
from peftcalc.stepsim.poly import evaluate
from peftcalc.stepsim.replay import SimResult, simulate


@dataclass(frozen=True)
class Activations:
    after_forward_bytes: int  # saved for backward + the loss, when forward returns
    forward_peak_bytes: int  # the most live during forward
    backward_peak_bytes: int  # the most live during backward (gradients included)
    gradient_bytes: int  # parameter gradients when backward ends (equals memory.py's, a consistency check)

    @property
    def total(self) -> int:
        """The activations proper: what the forward leaves alive for backward."""
        return self.after_forward_bytes


# Families whose sdpa attention runs ATen matmuls on (B, H, ...) views (the CPU math composite, BLOOM's baddbmm):
# a batch of one views what a larger batch copies. Eager attention does this in every family.
BATCH_SENSITIVE = frozenset({"gpt2", "bert", "roberta", "t5", "mt5", "falcon", "bloom", "opt", "gpt_neox"})


def step_config(setup: Setup, family: str | None = None, accumulating: bool = False, device: str = "cuda",
                adaptation: Adaptation | None = None) -> StepConfig:
    """What of the setup changes the replayed step (batch and sequence stay symbols) on `device`: "cuda" (what
    users run; the GPU's attention kernels and dropout masks) or "cpu" (what the traced backend runs).
    `accumulating`: a later micro-batch of gradient accumulation, whose parameters already hold gradients. With a
    quantized base: peft's kbit preparation (fp32 parameters, quant.kbit_prepared) and what the bitsandbytes release
    keeps."""
    loaded = p = setup.recipe
    quantized = adaptation is not None and adaptation.quantized_base
    if adaptation is not None and kbit_preparation_applies(adaptation, setup):
        p = kbit_prepared(p)
    batch1 = setup.batch_size == 1 and (setup.attention == "eager" or family is None or family in BATCH_SENSITIVE)
    mask = "packed" if setup.packing else "padded" if setup.padded and setup.batch_size > 1 else "none"
    return StepConfig(p.param_dtype, p.compute_dtype, setup.attention, setup.gradient_checkpointing, p.adapter_dtype,
                      batch1, accumulating, quant_dtype=loaded.param_dtype if quantized else "",
                      bnb_compute_dtype=loaded.compute_dtype if quantized else "",
                      bnb_keeps_input=quantized and keeps_4bit_input(setup.bitsandbytes_version),
                      bnb_python_dequant=quantized and python_dequant_forward(setup.bitsandbytes_version),
                      autocast=p.autocast, device=device,
                      reentrant=setup.gradient_checkpointing and setup.reentrant_checkpointing, loss=setup.loss,
                      mask=mask, shift_copy=setup.transformers_version is not None
                      and version_tuple(setup.transformers_version) < (4, 49))


def sizes(adaptation: Adaptation, setup: Setup) -> dict[str, int]:
    """The symbols' values: B batch, S tokens given, T tokens the layers see, K keys, P prefix tokens; for the
    loss variants Tc, torchtune's chunk of the sequence (torch.chunk into OUTPUT_CHUNKS: ceil(T / 8)), and C,
    Liger's rows per logits chunk: min(next_pow2(ceil(B*T / ceil(V / h))), B*T)
    (fused_linear_cross_entropy_forward)."""
    from peftcalc.stepsim.families.common import OUTPUT_CHUNKS

    a = adaptation.spec.arch
    t = setup.seq_len + adaptation.extra_tokens
    rows = setup.batch_size * t
    per = -(-rows // -(-a.vocab_size // a.token_dim))
    return {"B": setup.batch_size, "S": setup.seq_len, "T": t, "K": t + adaptation.prefix_tokens,
            "P": adaptation.prefix_tokens, "Tc": -(-t // OUTPUT_CHUNKS), "C": min(1 << (per - 1).bit_length(), rows)}


@lru_cache(maxsize=8192)
def activation_bytes(adaptation: Adaptation, setup: Setup, accumulating: bool = False, device: str = "cuda"
                     ) -> Activations:
    """The replayed step's activations and transient peaks for this batch and sequence length on `device`.

    `accumulating`: a later micro-batch of gradient accumulation. Every trainable parameter already holds its
    gradient from the micro-batches before; torch adds each new gradient into it in place and frees the new one.
    The peaks are then above start + the held gradients (which the caller adds), with the parameters' own
    gradients left out (`gradient_bytes` is 0)."""
    r: SimResult = simulate(adaptation, step_config(setup, adaptation.spec.arch.family, accumulating, device,
                                                    adaptation))
    v = sizes(adaptation, setup)
    return Activations(
        after_forward_bytes=evaluate(r.after_forward, v),
        forward_peak_bytes=max(evaluate(p, v) for p in r.forward_peaks),
        backward_peak_bytes=max(evaluate(p, v) for p in r.backward_peaks),
        gradient_bytes=evaluate(r.gradients, v),
    )
