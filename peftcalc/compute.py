"""Training compute: FLOPs per token by method (the count MFU is quoted in), and what a run costs in money.

The step's time is not derived from these counts: hardware/compute_time.py times the replayed step's kernels
(kernels.py: every matmul with its shape, attention, memory-bound work) at the GPU's measured rates; these FLOPs give
the MFU that time implies, and the time under a user's --mfu.

Conventions (integers: FLOPs are ints with the unit in the name; time and money are floats, formatted in
render code only):

* A multiply-add is 2 FLOPs. A matmul with a weight of N parameters costs 2N FLOPs per token forward, and
  backward costs 2N for the gradient with respect to its input plus 2N for the gradient with respect to its
  weight. Hence full training ~6N per token (Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
  arXiv:2001.08361, section 2.1 and Table 1: C_forward ~ 2N, C ~ 6N).
* Attention scores and the weighted sum of values have no weights: QK^T and AV cost 2·d_attn·T each per query
  token forward (T = the number of keys), 4·L·d_attn·T per token over L layers, and training (forward +
  backward, which is twice the forward) 12·L·H·Q·T: the convention of PaLM's MFU (Chowdhery et al. 2022,
  arXiv:2204.02311, appendix B: "6N + 12LHQT"), where H·Q = d_attn, T the sequence length, no causal halving.
  Kaplan's Table 1 counts only QK^T (2·n_layer·n_ctx·d_attn forward, 6·n_layer·n_ctx·d_attn training); we
  follow PaLM because published MFU figures are quoted in its convention.
* N here is the parameters that take part in a matmul for each token: every linear layer (the output head
  included, even when tied to the embedding), the experts a token is routed to (top-k of E, balanced routing
  assumed), and for an inferred shape the unattributed remainder (assumed dense). Embedding lookups, norms
  and position tables do no matmul and are not counted (Kaplan's N also excludes embeddings).
* Frozen-base methods (every PEFT method): no weight gradients for frozen layers, but the activation gradient
  still flows through every layer down to the lowest trainable tensor, which for every method here is in (or
  below) the first block: forward 2N + backward 2N = 4N, plus the attention term, plus 6 per trainable
  parameter for the adapters themselves (an upper bound for prompt/prefix/IA3 vectors, which do no matmul;
  negligible next to 4N either way).
* Gradient checkpointing recomputes the forward of every transformer block once during backward (HF's
  per-block checkpointing): + 2·(N - head) + the attention forward + 2 per trainable adapter parameter.
  Strictly, MFU (PaLM appendix B) excludes rematerialization; the utilisation reported here is over the FLOPs
  the GPU executes, recomputation included (PaLM's "HFU").
* Prompt tuning / p-tuning prepend virtual tokens: every sequence of `seq` data tokens runs as seq + v
  positions. Prefix tuning adds v keys/values to every attention layer: T = seq + v in the attention term.
  FLOPs are reported per DATA token (what --tokens counts).
* QLoRA's dequantization of the 4-bit base (bitsandbytes dequantizes each weight before its matmul, in
  forward, backward and recomputation) is elementwise work, not counted as FLOPs here; the time model costs it
  as memory traffic (kernels.py). Likewise DoRA's per-step weight-norm computation and p-tuning's prompt MLP
  (run once per step, not per token) are not counted here; the replay times them.
* Encoder-decoder models are approximated as every token passing through every layer (input and target of
  equal length); the cross-attention term is not counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from peftcalc.errors import PeftcalcError
from peftcalc.methods.base import Adaptation
from peftcalc.model.spec import ModelSpec

SECONDS_PER_HOUR = 3600


# ---- parameters that do matmuls -----------------------------------------------------------------------

def head_matmul_params(spec: ModelSpec) -> int:
    """Parameters of the output head's matmul (counted even when tied: the matmul still runs)."""
    return sum(lin.weight_params * lin.count for lin in spec.linears if lin.head)


def matmul_params(spec: ModelSpec) -> int:
    """N of the 6N rule: parameters each token multiplies (Kaplan et al. 2020, section 2.1: embeddings
    excluded). Linears (weights only: a bias is an add), active experts, routers and unattributed remainders."""
    n = sum(lin.weight_params * lin.count for lin in spec.linears)
    a = spec.arch
    for p in spec.others:
        if p.kind == "expert":
            n += p.total_params * a.experts_per_token // a.num_experts if a.num_experts else p.total_params
        elif p.kind in ("other", "unattributed"):
            n += p.total_params
    return n


def attention_dim(spec: ModelSpec) -> int:
    """d_attn = H·Q of PaLM's formula: query heads x head dimension."""
    return spec.arch.num_heads * spec.arch.head_dim


# ---- FLOPs per position (one token position of one sequence) -------------------------------------------

def attention_forward_flops(spec: ModelSpec, keys: int) -> int:
    """QK^T and AV per query position, forward: 2·d_attn·T each, over the L layers with softmax attention (PaLM
    appendix B; hybrid models' linear-attention and Mamba layers have no T-long attention; sliding windows are
    counted at full length, an upper bound)."""
    a = spec.arch
    layers = a.attention_layers if a.attention_layers is not None else a.num_layers
    return 4 * layers * attention_dim(spec) * keys


def full_training_flops_per_position(spec: ModelSpec, keys: int) -> int:
    """Full fine-tuning: 6N + 12·L·H·Q·T (Kaplan et al. 2020 C = 6N; Chowdhery et al. 2022 appendix B)."""
    return 6 * matmul_params(spec) + 3 * attention_forward_flops(spec, keys)


def frozen_training_flops_per_position(spec: ModelSpec, trainable_params: int, keys: int) -> int:
    """A frozen base with trainable adapters: forward 2N + activation-gradient 2N (no weight gradients for
    frozen weights), the attention term as in full training, and 6 per trainable parameter (forward 2 +
    backward 4, as Kaplan's 6N for the adapters' own matmuls)."""
    return 4 * matmul_params(spec) + 3 * attention_forward_flops(spec, keys) + 6 * trainable_params


def recompute_flops_per_position(spec: ModelSpec, trainable_params: int, keys: int, full: bool) -> int:
    """Gradient checkpointing: one more forward of every block (the head is outside the checkpointed blocks):
    2·(N - head) + the attention forward + the adapters' forward (Chen et al. 2016, arXiv:1604.06174:
    checkpointing costs one extra forward pass)."""
    adapters = 0 if full else 2 * trainable_params
    return 2 * (matmul_params(spec) - head_matmul_params(spec)) + attention_forward_flops(spec, keys) + adapters


# ---- per data token, per run ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Flops:
    """FLOPs of one sequence of `seq_len` data tokens, split by where they come from."""

    seq_len: int
    positions: int  # seq_len + virtual tokens
    keys: int  # positions + prefix tokens
    train_flops_per_seq: int  # forward + backward (+ weight gradients where trained)
    recompute_flops_per_seq: int  # gradient checkpointing's extra forward (0 without it)
    forward_flops_per_seq: int = 0  # the forward alone (the rest, recomputation included, is backward)

    @property
    def flops_per_seq(self) -> int:
        return self.train_flops_per_seq + self.recompute_flops_per_seq

    @property
    def flops_per_token(self) -> int:
        """Per data token, rounded to the nearest FLOP."""
        return (2 * self.flops_per_seq + self.seq_len) // (2 * self.seq_len)


def training_flops_per_seq(adaptation: Adaptation, seq_len: int, gradient_checkpointing: bool) -> Flops:
    """FLOPs of one training sequence for a method: virtual tokens lengthen the sequence (prompt/p-tuning),
    prefixes lengthen the keys (prefix tuning)."""
    if seq_len <= 0:
        raise PeftcalcError(f"sequence length must be positive, got {seq_len}")
    spec = adaptation.spec
    positions = seq_len + adaptation.extra_tokens
    keys = positions + adaptation.prefix_tokens
    full = adaptation.trains_base
    trainable = adaptation.params.trainable
    if full:
        per_position = full_training_flops_per_position(spec, keys)
    else:
        per_position = frozen_training_flops_per_position(spec, trainable, keys)
    recompute = recompute_flops_per_position(spec, trainable, keys, full) if gradient_checkpointing else 0
    forward = forward_flops_per_position(spec, 0 if full else trainable, keys)
    return Flops(seq_len, positions, keys, per_position * positions, recompute * positions, forward * positions)


def forward_flops_per_position(spec: ModelSpec, adapter_params: int, keys: int) -> int:
    """The forward pass: 2N + the attention forward + 2 per adapter parameter (Kaplan et al. 2020: C_forward = 2N).
    Full training's 6N is this forward plus a backward of twice it."""
    return 2 * matmul_params(spec) + attention_forward_flops(spec, keys) + 2 * adapter_params


def run_flops(flops: Flops, tokens: int, epochs: float) -> int:
    """FLOPs of a run over `tokens` data tokens per epoch, `epochs` times (epochs may be fractional)."""
    check_run(tokens, epochs)
    return round(Fraction(flops.flops_per_seq * tokens) * Fraction(epochs) / flops.seq_len)  # exact, then rounded


def check_run(tokens: int, epochs: float) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise PeftcalcError(f"--tokens must be a positive number of training tokens, got {tokens!r}")
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not epochs > 0 or epochs == float("inf"):
        raise PeftcalcError(f"--epochs must be a positive number, got {epochs!r}")


def check_mfu(mfu: float) -> None:
    if not isinstance(mfu, (int, float)) or isinstance(mfu, bool) or not 0 < mfu <= 1:
        raise PeftcalcError(f"--mfu must be a fraction in (0, 1], e.g. 0.4 for 40 %, got {mfu!r}")


# ---- time and money ------------------------------------------------------------------------------------

def rent_usd(hours: float, num_gpus: int, usd_per_gpu_hour: float) -> float:
    """Renting: GPU-hours x the hourly price per GPU (billing granularity and minimums ignored)."""
    return hours * num_gpus * usd_per_gpu_hour


def purchase_usd(num_gpus: int, usd_per_gpu: int) -> int:
    """Buying the GPUs alone (no host, power, networking or operations)."""
    return num_gpus * usd_per_gpu


def break_even_runs(purchase: float, rent_per_run: float) -> float | None:
    """How many such runs make buying cheaper than renting: purchase / rent of one run (None if a run is free)."""
    if rent_per_run <= 0:
        return None
    return purchase / rent_per_run
