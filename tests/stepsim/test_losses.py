"""The loss variants of the replay (stepsim/families/common.py) against real torch on the CPU, to the byte where
the algorithm runs in torch as the framework writes it:

- chunked: torchtune's `TransformerDecoder.chunked_output` and `CEWithChunkedOutputLoss`, written out here
  in torch as torchtune's code does it (8 chunks of the sequence, fp32 per chunk, sum then divide);
- fused: Liger's fused linear cross-entropy (liger_kernel/ops/fused_linear_cross_entropy.py), whose triton
  kernel cannot run on the CPU: its algorithm written in torch (zeros_like gradients, chunks of C rows, the
  softmax-minus-one-hot gradient in place in the chunk's logits, the input gradient copied in, the weight
  gradient accumulated in place; backward hands the saved gradients back). The in-place softmax needs a few
  (C, 1) temporaries the triton kernel keeps in registers: compared within those bytes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from peftcalc.stepsim.families.common import OUTPUT_CHUNKS, chunked_cross_entropy, fused_linear_cross_entropy

from .harness import activation, predict
from .torch_meter import measure

B, T, H, V = 2, 16, 8, 40
VALUES = {"B": B, "T": T, "S": T, "K": T, "P": 0, "Tc": T // OUTPUT_CHUNKS}


def _rows(bt: int) -> int:
    """Liger's chunk rows: min(next_pow2(ceil(BT / ceil(V / H))), BT)."""
    per = -(-bt // -(-V // H))
    return min(1 << (per - 1).bit_length(), bt)


def _sim(fn, trains_head: bool, values: dict):
    def make_params(sim):
        return [sim.param("lm_head.weight", (V, H), "fp32", trains_head)]

    def forward(ops, x, w):
        m = SimpleNamespace(f=ops, sim=ops.sim, outer=[])
        out = fn(m, x, w)
        m.outer.clear()  # the caller's locals (the list of logits) die when the loss is returned
        return out

    return predict(lambda sim: [activation(sim, ("B", "T", H), "fp32")], forward, make_params, values=values)


def _torch(fn, trains_head: bool):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(V, H, generator=gen), requires_grad=trains_head)
    labels = torch.randint(0, V, (B, T), generator=gen)
    return measure(lambda: [torch.randn(B, T, H, generator=gen).requires_grad_(True)], lambda x, w, y: fn(x, w, y),
                   params=[w, labels])


def torchtune_chunked(x, w, labels):
    logits = [F.linear(chunk, w) for chunk in x.chunk(OUTPUT_CHUNKS, dim=1)]  # chunked_output
    total_elements = (labels != -100).sum()
    labels = [t.reshape(-1) for t in labels.chunk(OUTPUT_CHUNKS, dim=1)]
    logits = [lg.reshape(-1, lg.size(-1)) for lg in logits]
    total = 0.0
    for lg, lb in zip(logits, labels):
        total = total + F.cross_entropy(lg.float(), lb, ignore_index=-100, reduction="sum")
    return total / total_elements


class LigerAlgorithm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, target):
        bt = x.shape[0]
        rows = _rows(bt)
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(w) if w.requires_grad else None
        loss_1d = torch.zeros(bt, dtype=torch.float32)
        for start in range(0, bt, rows):
            end = min(start + rows, bt)
            logits = x[start:end] @ w.t()
            tgt = target[start:end]
            picked = logits.gather(1, tgt[:, None])
            top = logits.amax(-1, keepdim=True)
            logits.sub_(top).exp_()
            total = logits.sum(-1, keepdim=True)
            loss_1d[start:end] = (total.log() + top - picked).squeeze(-1)
            logits.div_(total)
            logits.scatter_add_(1, tgt[:, None], torch.full_like(picked, -1.0))
            logits.mul_(1.0 / bt)
            grad_input[start:end] = logits @ w
            if grad_weight is not None:
                grad_weight.addmm_(logits.t(), x[start:end])
            del logits, picked, top, total
        ctx.save_for_backward(grad_input, grad_weight)
        return loss_1d.sum() / bt

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight = ctx.saved_tensors
        return grad_input, grad_weight, None


def liger_fused(x, w, labels):
    return LigerAlgorithm.apply(x.view(-1, H), w, labels.reshape(-1))


@pytest.mark.parametrize("trains_head", [False, True])
def test_chunked_cross_entropy_is_torchtunes(trains_head):
    real = _torch(torchtune_chunked, trains_head)
    sim = _sim(lambda m, x, w: chunked_cross_entropy(m, x, lambda t: m.f.linear(t, w, None, V), V), trains_head,
               VALUES)
    assert (sim.forward_peak, sim.after_forward, sim.saved_new) == (real.forward_peak, real.after_forward,
                                                                   real.saved_new)
    assert sim.backward_peak == real.backward_peak and sim.grads == real.grads


@pytest.mark.parametrize("trains_head", [False, True])
def test_fused_cross_entropy_is_ligers(trains_head):
    real = _torch(liger_fused, trains_head)
    sim = _sim(lambda m, x, w: fused_linear_cross_entropy(m, x, w, V), trains_head, {**VALUES, "C": _rows(B * T)})
    slack = 8 * _rows(B * T) * 4 + 1024  # the (C, 1) temporaries of the in-place softmax, the scatter's ones
    assert abs(sim.forward_peak - real.forward_peak) <= slack
    assert sim.after_forward == real.after_forward and sim.saved_new == real.saved_new
    assert abs(sim.backward_peak - real.backward_peak) <= slack and sim.grads == real.grads


def test_the_fused_loss_keeps_no_logits():
    """What makes it worth it: the chunked and standard losses keep (B, T, V) fp32, the fused one (B, T, h)."""
    big = {**VALUES, "C": _rows(B * T)}
    fused = _sim(lambda m, x, w: fused_linear_cross_entropy(m, x, w, V), False, big)
    chunked = _sim(lambda m, x, w: chunked_cross_entropy(m, x, lambda t: m.f.linear(t, w, None, V), V), False, big)
    assert fused.saved_new == B * T * H * 4  # the input gradient, computed in forward
    assert chunked.saved_new >= B * T * V * 4  # every chunk's fp32 log-softmax


def transformers_4_48_loss(logits, labels):
    """transformers 4.46-4.48's ForCausalLMLoss as it was written (before PR #35646, January 2025)."""
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, V), shift_labels.view(-1), ignore_index=-100)


def test_the_old_loss_copies_the_shifted_logits():
    from peftcalc.stepsim.families.common import _shifted_logits_loss

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (B, T), generator=gen)
    real = measure(lambda: [torch.randn(B, T, V, generator=gen).to(torch.bfloat16).requires_grad_(True)],
                   lambda lg, y: transformers_4_48_loss(lg, y), params=[labels])
    sim = predict(lambda s: [activation(s, ("B", "T", V), "bf16")],
                  lambda ops, lg: _shifted_logits_loss(SimpleNamespace(f=ops, sim=ops.sim), lg, V), values=VALUES)
    # the model counts T - 1 rows as T: one row of each fp32 (V) tensor apart, per sequence
    row = B * V * 4
    assert 0 <= sim.forward_peak - real.forward_peak <= 3 * row
    assert 0 <= sim.backward_peak - real.backward_peak <= 3 * row
    assert sim.forward_peak - real.forward_peak < 0.2 * real.forward_peak
