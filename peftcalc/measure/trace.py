"""The traced backend: the real transformers + peft training step on fake tensors, every storage counted.

The model is built on the `meta` device and adapted there (peft cannot be applied inside `FakeTensorMode`),
then every parameter, buffer and stray tensor attribute is replaced by a fake tensor of the same shape and
dtype on the `cpu` device (fake `meta` tensors take wrong attention paths; a fake `cuda` device needs a CUDA
build of torch). The step then runs for real in `FakeTensorMode`: same operators, same shapes, no data, no
memory — a 70B step fits in a few GB of host RAM. On the CPU this equals a real step to the byte
(tests/measure/test_trace_vs_run.py). On a GPU the allocator rounds, caches and adds a context: see run.py.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from peftcalc.measure.meter import LiveMeter
from peftcalc.measure.checkpoint_file import state_dict_file_bytes
from peftcalc.measure.adapted import build_adapted
from peftcalc.measure.quantize import bitsandbytes_release, fake_code_tables, fake_quantized, is_bnb_weight
from peftcalc.measure.step import StepNumbers, measured_step, prepare_training
from peftcalc.methods.base import Adaptation, Method
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup


def fakeify(model: nn.Module, device: str = "cpu") -> None:
    """Replace every parameter, buffer and tensor attribute of `model` (built on meta) by an empty tensor on
    `device` of the same shape and dtype. Call it inside `FakeTensorMode`. Shared tensors stay shared."""
    memo: dict[int, torch.Tensor] = {}

    def new(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
            if isinstance(t, nn.Parameter):
                out = nn.Parameter(out, requires_grad=t.requires_grad)
            memo[id(t)] = out
        return memo[id(t)]

    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and is_bnb_weight(module, name):  # bitsandbytes' quantized weight: quantize a fake one
                module._parameters[name] = fake_quantized(module, p, device)
            elif p is not None:
                module._parameters[name] = new(p)  # type: ignore[assignment]
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = new(b)
        for name, v in list(vars(module).items()):
            if _stray(v):
                setattr(module, name, new(v))
            elif isinstance(v, dict) and any(_stray(x) for x in v.values()):
                # peft keeps e.g. prompt_tokens as {adapter name: index tensor} on the PeftModel
                v.update({k: new(x) for k, x in v.items() if _stray(x)})


def _stray(v: object) -> bool:
    """A plain tensor attribute (not a parameter or buffer) that is not fake yet."""
    return (isinstance(v, torch.Tensor) and not isinstance(v, (nn.Parameter, FakeTensor)))


@contextlib.contextmanager
def fake_step_mode(adaptation: Adaptation, setup: Setup) -> Iterator[str | None]:
    """The FakeTensorMode a step of `adaptation` is traced in: with a quantized base, bitsandbytes' code tables
    made fake (built before the mode) and the behaviour of the setup's bitsandbytes release; yields that release's
    note (None for today's)."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    tables = fake_code_tables(mode) if adaptation.quantization is not None else contextlib.nullcontext()
    with tables, bitsandbytes_release(setup.bitsandbytes_version) as release, mode:
        yield release


def warmup_of(adaptation: Adaptation) -> str:
    """bitsandbytes' first forward changes what is stored (Linear4bit casts its bias to the compute dtype,
    Linear8bitLt moves CB/SCB to its state): a quantized model warms up with a whole step."""
    return "step" if adaptation.quantized_base else "optimizer"


def trace_step(spec: ModelSpec, method: Method, setup: Setup, checkpoint: bool = True
               ) -> tuple[StepNumbers, Adaptation, dict[str, Any], int | None]:
    """Trace the warm-up and measured step. Returns the numbers, the adaptation, facts about the model (trainable
    and total parameters, notes, wall seconds) and the bytes the task's safetensors checkpoint would take."""
    t0 = time.perf_counter()
    model, adaptation, notes = build_adapted(spec, method, setup, device="meta")
    info = model_facts(model)
    ckpt = None
    with fake_step_mode(adaptation, setup) as release:
        fakeify(model, "cpu")
        prep = prepare_training(model, spec, setup, "cpu", notes)
        numbers = measured_step(prep, LiveMeter(), warmup=warmup_of(adaptation))
        if checkpoint:
            ckpt = state_dict_file_bytes(prep.model)
    info["notes"] = prep.notes + ([release] if release else [])
    info["wall_seconds"] = time.perf_counter() - t0
    return numbers, adaptation, info, ckpt


def model_facts(model: nn.Module) -> dict[str, Any]:
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total}
