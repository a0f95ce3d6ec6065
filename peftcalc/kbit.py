"""The recipe around a quantized base: what peft's prepare_model_for_kbit_training turns on, and what the estimate
says about it and about the bitsandbytes release (the facts themselves live in quant.py)."""

from __future__ import annotations

from dataclasses import replace

from peftcalc.methods.base import Adaptation
from peftcalc.quant import CURRENT_BITSANDBYTES, keeps_4bit_input
from peftcalc.setup import Setup


def kbit_preparation_applies(adaptation: Adaptation, setup: Setup) -> bool:
    return setup.kbit_preparation and adaptation.quantized_base


def prepared_setup(adaptation: Adaptation, setup: Setup) -> Setup:
    """The setup the step really runs with. prepare_model_for_kbit_training(model) (use_gradient_checkpointing
    =True by default) turns gradient checkpointing on; called with no checkpointing kwargs it leaves
    use_reentrant to torch, which defaults to the reentrant variant (torch/utils/checkpoint.py), and hooks the
    input embeddings so their output requires grad (`enable_input_require_grads`). When the setup already asks
    for checkpointing, its variant stands (a trainer's later gradient_checkpointing_enable call overrides).
    With kbit_gradient_checkpointing off (TRL passes use_gradient_checkpointing=args.gradient_checkpointing)
    checkpointing is what the setup says."""
    if not kbit_preparation_applies(adaptation, setup) or setup.gradient_checkpointing \
            or not setup.kbit_gradient_checkpointing:
        return setup
    return replace(setup, gradient_checkpointing=True, reentrant_checkpointing=True)


def quantized_base_notes(adaptation: Adaptation, setup: Setup) -> tuple[str, ...]:
    """What the estimate of a quantized base assumed about the recipe and the bitsandbytes release."""
    if not adaptation.quantized_base:
        return ()
    notes = []
    if setup.kbit_preparation:
        ckpt = ("gradient checkpointing on (peft's default use_gradient_checkpointing=True; reentrant unless "
                "--gradient-checkpointing chose the variant; --no-kbit-checkpointing leaves it to the setup)"
                if setup.kbit_gradient_checkpointing else "checkpointing as the setup says (--no-kbit-checkpointing)")
        notes.append("peft's prepare_model_for_kbit_training (--no-kbit-preparation to leave it out): every "
                     f"non-quantized parameter in fp32, activations in fp32 unless autocast, {ckpt}")
        if adaptation.spec.arch.num_experts:
            notes.append("prepare_model_for_kbit_training upcasts the fused MoE experts to fp32, which "
                         "transformers 5's grouped_mm refuses (bf16 only): such a run fails; estimated as if it ran, "
                         "--no-kbit-preparation is what runs")
    version = setup.bitsandbytes_version
    release = f"bitsandbytes {version}" if version else f"today's bitsandbytes ({CURRENT_BITSANDBYTES})"
    q = adaptation.quantization
    if q is not None and q.bits == 8:
        notes.append(f"{release}: each 8-bit linear keeps its input for backward (MatMul8bitFp/MatMul8bitLt `A`); "
                     "CUDA's MatMul8bitLt also keeps the outlier columns (threshold 6.0), which depend on the data "
                     "and are not counted")
    elif keeps_4bit_input(version):
        notes.append(f"{release} keeps the input of every 4-bit linear for backward (MatMul4Bit ctx.tensors = (A, B); "
                     "fixed in 0.43.2 by bitsandbytes PR #1270)")
    else:
        notes.append(f"{release}: 4-bit linears keep no input for backward (bitsandbytes PR #1270, 0.43.2); give "
                     "--bitsandbytes-version for runs on older releases")
    return tuple(notes)
