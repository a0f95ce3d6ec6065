"""One training step of the real model, prepared for a spec, a method and a setup, and measured by phase.

`adapted.build_adapted` makes the model with the method applied (see there). `prepare_training` adds what a
trainer adds: gradient checkpointing, the optimizer with an explicit AdamW implementation (and, for the
mixed-precision recipes, the fp32 master weights), the autocast context, and one batch of inputs.
`measured_step` runs a warm-up step (AdamW creates its states there), then the measured step — forward,
backward, optimizer step — counting every live storage with a `LiveMeter`.

Choices this module makes, stated once:

- Inputs have no padding and are not packed: `attention_mask` is not passed and transformers is told the rows
  are single sequences (`unpacked_sequences`), so sdpa attention runs its causal kernel and no
  (batch, 1, seq, seq) mask is built (under fake tensors transformers 5 would otherwise build one).
  Labels are a separate copy of the input ids; for encoder-decoder models the decoder also gets `seq` tokens.
- Gradient accumulation (`Setup.gradient_accumulation` > 1) runs that many forward/backward passes before the
  optimizer step, on the same batch; gradients add up in `.grad` between them.
- Only the loss survives the forward (the model output, and with it the logits, is dropped at once, as
  Hugging Face's Trainer does); gradients are set to None after the step (`zero_grad(set_to_none=True)`).
- Gradient checkpointing is transformers' own, non-reentrant (`use_reentrant=False`) unless the setup asks for
  reentrant checkpointing.
- `bf16-mixed`/`fp16-mixed`: weights (and so activations and gradients) in bf16/fp16; `MasterWeightOptimizer`
  keeps an fp32 copy of every trainable low-precision weight, turns each low-precision gradient into an fp32
  master gradient (freeing the low-precision one) just before the AdamW step, steps AdamW on the fp32 copies
  (states fp32), and copies them back. fp16 multiplies the loss by a static scale of 2**16 and divides the
  master gradients by it (no overflow check). Tensors already in fp32 (peft's adapters) need no copy.
- `amp-bf16`: fp32 weights, forward under `torch.autocast(bf16)`.
- The measured model of a `--params N` spec is its representative shape; the "unattributed" remainder of
  N has no module and is not built.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from peftcalc.errors import PeftcalcError
from peftcalc.measure.adapted import DTYPES, base_model, model_has_prefix
from peftcalc.measure.meter import LiveMeter, SavedTensorsAccount, storage_keys, unique_storage_bytes
from peftcalc.measure.optimizer import FP16_LOSS_SCALE, MasterWeightOptimizer, make_optimizer
from peftcalc.measure.quantize import BNB_LINEARS, quant_state_tensors
from peftcalc.model.spec import ModelSpec
from peftcalc.precision import Precision, get_precision
from peftcalc.quant import kbit_prepared
from peftcalc.setup import Setup


# ---- the prepared step ------------------------------------------------------------------------------------

@dataclass
class Prepared:
    model: nn.Module
    optimizer: Any  # torch.optim.Optimizer or MasterWeightOptimizer
    inputs: dict[str, torch.Tensor]
    precision: Precision
    setup: Setup
    autocast_dtype: torch.dtype | None
    device_type: str
    loss_scale: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def master_weights(self) -> list[torch.Tensor]:
        return self.optimizer.master_weights if isinstance(self.optimizer, MasterWeightOptimizer) else []

    def forward_loss(self) -> torch.Tensor:
        ctx = (torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx, unpacked_sequences():
            loss = self.model(**self.inputs).loss  # the output (logits) dies here; only the loss lives on
        if self.loss_scale != 1.0:
            loss = loss * self.loss_scale
        return loss


@contextlib.contextmanager
def unpacked_sequences():
    """Tell transformers the batch holds one sequence per row (no packing), as our inputs do.

    transformers 5 checks position ids for packed sequences with a data-dependent test that fake tensors
    cannot answer, and then builds a full (batch, 1, seq, seq) mask; on real tensors the test says "not
    packed" and sdpa runs its causal kernel. Stating the fact makes both take the real path."""
    try:
        from transformers import masking_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def make_inputs(spec: ModelSpec, setup: Setup, device: str | torch.device) -> dict[str, torch.Tensor]:
    shape = (setup.batch_size, setup.seq_len)
    ids = torch.randint(0, spec.arch.vocab_size, shape, device=device)
    return {"input_ids": ids, "labels": ids.clone()}


def prepare_training(model: nn.Module, spec: ModelSpec, setup: Setup, device: str | torch.device,
                     notes: list[str] | None = None, trainable: list[nn.Parameter] | None = None) -> Prepared:
    """Gradient checkpointing, the optimizer, autocast and the inputs around an adapted model on `device`.

    Call it where tensors are created for the step (inside `FakeTensorMode` when tracing)."""
    precision = get_precision(setup.precision)
    make = lambda ps: make_optimizer(ps, setup.optimizer, setup.adamw_impl)  # noqa: E731
    model.train()
    if setup.gradient_checkpointing:
        base = base_model(model)
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise PeftcalcError(f"{spec.family} does not support gradient checkpointing in transformers")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": setup.reentrant_checkpointing})
    if setup.gradient_checkpointing and model_has_prefix(model):
        raise PeftcalcError("prefix tuning cannot run with --gradient-checkpointing here: transformers 5 drops the "
                            "key/value cache inside checkpointed layers, and the cache is where peft puts the prefix")
    params = trainable if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PeftcalcError("nothing to train: the method left no trainable parameter")
    loss_scale = FP16_LOSS_SCALE if precision.param_dtype == "fp16" else 1.0
    if precision.master:
        opt: Any = MasterWeightOptimizer(params, make, loss_scale)
    else:
        opt = make(params)
    if setup.kbit_preparation and any(type(m).__name__ in BNB_LINEARS for m in model.modules()):
        precision = kbit_prepared(precision)  # fp32 parameters; mixed recipes autocast (Trainer bf16/fp16=True)
    autocast = DTYPES[precision.compute_dtype] if precision.autocast else None
    dev = torch.device(device)
    return Prepared(model, opt, make_inputs(spec, setup, dev), precision, setup, autocast, dev.type, loss_scale,
                    list(notes or []))


# ---- the measured step ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepNumbers:
    """Bytes by category (distinct storages) and the live-storage peaks of the measured step."""

    weight_bytes: int  # parameters and buffers of the model
    master_weight_bytes: int  # fp32 master copies (mixed-precision recipes)
    gradient_bytes: int  # .grad of every parameter after backward
    optimizer_state_bytes: int  # AdamW's exp_avg, exp_avg_sq and step
    activation_bytes: int  # live bytes after forward minus before it: saved activations, the loss
    saved_tensor_bytes: int  # distinct non-parameter storages autograd saved (saved_tensors_hooks)
    baseline_bytes: int  # live bytes before the measured forward
    peak_bytes: int  # the most live bytes at any moment of the measured step
    peak_phase: str | None
    phase_peaks: dict[str, int]
    step_seconds: float | None = None  # wall time of the measured step (meaningful for real tensors only)


def _param_and_buffer_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers, and the statistics bitsandbytes keeps beside a quantized weight (QuantState)."""
    return [p for p in model.parameters()] + [b for b in model.buffers()] + quant_state_tensors(model)


MATH_SDPA_NOTE = ("sdpa fell back to its math path here (on the CPU: attention dropout > 0 or an additive bias such as "
                  "T5's position bias): the (batch, heads, seq, seq) attention probabilities are materialized and "
                  "saved; CUDA's flash/memory-efficient kernels would not keep them, so a GPU needs less")


def note_attention_kernel(prep: Prepared, meter: LiveMeter) -> None:
    """State when sdpa did not run a fused kernel: the traced/CPU numbers then include the attention matrix."""
    if prep.setup.attention != "sdpa" or MATH_SDPA_NOTE in prep.notes:
        return
    fused = {n for n in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
             if hasattr(torch.ops.aten, n)}
    seen = {getattr(op, "__name__", str(op)).split(".")[0] for op in meter.ops_seen}
    if "_safe_softmax" in seen and not seen & fused:
        prep.notes.append(MATH_SDPA_NOTE)


def stray_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors modules hold as plain attributes (peft's prompt_tokens, rotary caches): alive from the start."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        for v in vars(module).values():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                out.append(v)
            elif isinstance(v, dict):
                out.extend(x for x in v.values() if isinstance(x, torch.Tensor) and not isinstance(x, nn.Parameter))
    return out


def optimizer_state_tensors(opt: Any) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def measured_step(prep: Prepared, meter: LiveMeter, sync: Callable[[], None] | None = None,
                  before_measured: Callable[[], None] | None = None, warmup: str = "step") -> StepNumbers:
    """Warm-up, then the measured step with per-phase peaks. `meter` must not be entered yet.

    `warmup="step"` runs a whole training step first; `warmup="optimizer"` only steps the optimizer on zero
    gradients, which creates the same AdamW states at a fraction of the cost (the tracer uses it; the tests
    check that both leave the measured step identical). `sync` waits for the device (CUDA);
    `before_measured` runs between the warm-up and the measured step (reset CUDA peak statistics)."""
    weights = _param_and_buffer_tensors(prep.model)
    meter.track_all(weights)
    meter.track_all(stray_tensors(prep.model))
    meter.track_all(prep.master_weights)
    meter.track_all(prep.inputs.values())
    sync = sync or (lambda: None)
    with meter:
        _warm_up(prep, warmup)
        sync()
        # after the warm-up: bitsandbytes' first forward re-stores some parameters (Linear4bit's bias)
        weights = _param_and_buffer_tensors(prep.model)
        param_keys = storage_keys(weights) | storage_keys(prep.master_weights)
        if before_measured is not None:
            before_measured()
        meter.reset_peak()
        baseline = meter.current
        t0 = time.perf_counter()
        after_forward, saved_bytes, gradient_bytes = _phases(prep, meter, param_keys)
        sync()
        step_seconds = time.perf_counter() - t0
        meter.phase(None)
    master_keys = storage_keys(prep.master_weights)
    return StepNumbers(
        weight_bytes=unique_storage_bytes(weights),
        master_weight_bytes=unique_storage_bytes(prep.master_weights),
        gradient_bytes=gradient_bytes,
        optimizer_state_bytes=unique_storage_bytes(optimizer_state_tensors(prep.optimizer),
                                                   exclude=master_keys | param_keys),
        activation_bytes=after_forward - baseline,
        saved_tensor_bytes=saved_bytes,
        baseline_bytes=baseline,
        peak_bytes=meter.phases.peak,
        peak_phase=meter.phases.peak_phase,
        phase_peaks=dict(meter.phases.peaks),
        step_seconds=step_seconds,
    )


def _warm_up(prep: Prepared, warmup: str) -> None:
    """One step before the measured one, so that AdamW's states exist (see measured_step)."""
    if warmup == "step":
        loss = prep.forward_loss()
        loss.backward()
        del loss
    elif warmup == "optimizer":
        with torch.no_grad():
            for p in prep.trainable:
                p.grad = torch.zeros_like(p)
    else:
        raise ValueError(f"unknown warm-up {warmup!r}")
    prep.optimizer.step()
    prep.optimizer.zero_grad(set_to_none=True)
    gc.collect()


def _phases(prep: Prepared, meter: LiveMeter, param_keys: set[int]) -> tuple[int, int, int]:
    """The measured forward, backward and optimizer step: live bytes after forward, bytes autograd saved, and
    gradient bytes after backward. With gradient accumulation, every micro-batch's forward and backward (each
    adding into the gradients the ones before left) count in those phases; the first one's after-forward and
    saved bytes are reported."""
    for micro in range(prep.setup.gradient_accumulation):
        meter.phase("forward")
        with SavedTensorsAccount(exclude=param_keys) as saved:
            loss = prep.forward_loss()
        if micro == 0:
            after_forward, saved_bytes = meter.current, saved.bytes
        note_attention_kernel(prep, meter)
        meter.phase("backward")
        loss.backward()
        del loss
    grads = [p.grad for p in prep.model.parameters() if p.grad is not None]
    gradient_bytes = unique_storage_bytes(grads)
    del grads
    meter.phase("optimizer")
    prep.optimizer.step()
    prep.optimizer.zero_grad(set_to_none=True)
    return after_forward, saved_bytes, gradient_bytes
