"""peftcalc.stepsim.ops against real torch, to the byte.

Each case runs one operator (or the short composition transformers writes) twice: in real torch on the CPU
(torch 2.13, small concrete sizes B=2, S=5, H=8), measured by tests/stepsim/torch_meter.py (a dispatch-mode
storage counter and saved-tensor hooks), and as the stepsim operator with symbolic sizes evaluated at the
same values (harness.py). Both report, above what existed before the forward:

- forward_peak / after_forward: the bytes of the new storages the forward allocates (at its peak, at its end);
- saved_new / saved_inputs: the bytes of the distinct storages the autograd graph saved, split into ones the
  forward created and the activations it was given (weights are counted elsewhere, in both);
- graph_only: what the graph keeps once the output is dropped;
- backward_peak / after_backward: the live bytes during and after backward, seeded with ones_like(output);
- grads: the bytes of each leaf's gradient (0 when it is the seed itself).

Cases stepsim does not model exactly are `xfail(strict=True)` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from peftcalc.stepsim.engine import DTYPE_BYTES, Tensor
from peftcalc.stepsim.ops import Ops

from .harness import SIZES, activation, predict
from .torch_meter import measure

TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int64": torch.int64}
H, V, HEADS, D = 8, 11, 2, 4
X = ("B", "S", H)



def concrete(shape: tuple) -> tuple[int, ...]:
    return tuple(SIZES[d] if isinstance(d, str) else d for d in shape)


@dataclass
class Case:
    """acts: activations made in the step, (shape, dtype, requires_grad); params: weights, (shape, dtype,
    trainable); ids: integer tensors that exist before the step, (shape, high). Both functions get
    (*acts, *params, *ids): `real` torch tensors, `sim` stepsim tensors after the Ops object."""

    acts: list
    real: Callable[..., torch.Tensor]
    sim: Callable[..., Tensor]
    params: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    autocast: str | None = None
    backward: bool = True


def run_both(c: Case):
    gen = torch.Generator().manual_seed(0)

    def real_inputs():
        out = []
        for shape, dt, rg in c.acts:
            if dt == "int64":  # ids made in the step
                out.append(torch.randint(0, V, concrete(shape), generator=gen))
                continue
            t = torch.empty(concrete(shape), dtype=TORCH[dt]).uniform_(0.5, 1.5, generator=gen)
            out.append(t.requires_grad_(rg))
        return out

    real_params = [torch.nn.Parameter(torch.empty(concrete(s), dtype=TORCH[dt]).uniform_(0.5, 1.5, generator=gen),
                                      requires_grad=tr) for s, dt, tr in c.params]
    real_params += [torch.randint(0, high, concrete(s), generator=gen) for s, high in c.ids]
    real = measure(real_inputs, c.real, real_params,
                   autocast=TORCH[c.autocast] if c.autocast else None, backward=c.backward)

    def sim_params(sim):
        ps = [sim.param(f"p{i}", s, dt, tr) for i, (s, dt, tr) in enumerate(c.params)]
        return ps + [sim.leaf(s, "int64") for s, _ in c.ids]

    sim = predict(lambda sim: [activation(sim, s, dt, rg) for s, dt, rg in c.acts], c.sim, sim_params,
                  autocast=c.autocast, backward=c.backward)
    return real, sim


def check(c: Case) -> None:
    real, sim = run_both(c)
    assert sim == real


# -- the harness itself ------------------------------------------------------------------------------------


def test_meter_sees_what_a_simple_chain_allocates():
    """(x * 2).sin(), numbers by hand (n = one (2, 5, 8) fp32 tensor, 320 B). Forward: the product (n, saved
    by sin) and sin's output (n). Backward: sin's derivative `grad * x2.cos()` makes cos (n) and the product
    (n) = 2n at the peak, cos freed, then the saved product released; x*2's derivative makes x's gradient
    (n) and sin's gradient goes: after backward, x's gradient replaced the saved product: 0."""
    n = 2 * 5 * 8 * 4
    m = measure(lambda: [torch.ones(2, 5, 8, requires_grad=True)], lambda x: (x * 2).sin())
    assert (m.forward_peak, m.after_forward, m.saved_new, m.saved_inputs, m.graph_only) == (2 * n, 2 * n, n, 0, n)
    assert (m.backward_peak, m.after_backward, m.grads) == (2 * n, 0, [n])


def test_meter_counts_views_once_and_frees_at_the_last_reference():
    from .torch_meter import StorageMeter
    meter = StorageMeter()
    with meter:
        a = torch.empty(100)
        b = a.view(10, 10).t()
        assert meter.current == 400
        del a
        assert meter.current == 400
        del b
        assert meter.current == 0
        c = torch.empty(10, dtype=torch.bfloat16)
    assert (meter.current, meter.peak) == (20, 400)
    del c


# -- linear, mm, addmm --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trained", "frozen"])
def test_linear_3d(dtype, bias, trainable):
    params = [((3, H), dtype, trainable)] + ([((3,), dtype, trainable)] if bias else [])
    check(Case([(X, dtype, True)], lambda x, w, b=None: F.linear(x, w, b),
               lambda f, x, w, b=None: f.linear(x, w, b, 3, op="addmm" if b is not None else "mm"), params))


@pytest.mark.parametrize("bias", [True, False], ids=["addmm", "mm"])
def test_linear_2d(bias):
    params = [((3, H), "fp32", True)] + ([((3,), "fp32", True)] if bias else [])
    check(Case([(("B", H), "fp32", True)], lambda x, w, b=None: F.linear(x, w, b),
               lambda f, x, w, b=None: f.linear(x, w, b, 3), params))


def test_linear_input_without_grad_saves_the_input_for_the_weight():
    check(Case([(X, "fp32", False)], lambda x, w: F.linear(x, w), lambda f, x, w: f.linear(x, w, None, 3),
               [((3, H), "fp32", True)]))


@pytest.mark.parametrize("trainable,bias", [
    pytest.param(False, True, id="frozen-bias"),
    pytest.param(False, False, id="frozen-nobias"),
    pytest.param(True, True, id="trained-bias"),
    pytest.param(True, False, id="trained-nobias"),
])
def test_linear_under_autocast_casts_input_and_weight(trainable, bias):
    """torch.autocast("cpu", bfloat16): linear casts its fp32 arguments to bf16 (copies); the mm saves the
    casts; the gradients are cast back (ToCopyBackward0)."""
    params = [((3, H), "fp32", trainable)] + ([((3,), "fp32", trainable)] if bias else [])
    check(Case([(X, "fp32", True)], lambda x, w, b=None: F.linear(x, w, b),
               lambda f, x, w, b=None: f.linear(x, w, b, 3), params, autocast="bf16"))


@pytest.mark.parametrize("trainable", [
    pytest.param(True, id="trained-cached"),
    pytest.param(False, id="frozen-recast"),
])
def test_autocast_caches_the_cast_of_a_trainable_weight_only(trainable):
    """A weight used twice under autocast: one cached cast for a leaf that requires grad, a cast per use
    for a frozen one (each saved by its mm, as the input requires grad)."""
    check(Case([(X, "fp32", True), (X, "fp32", True)],
               lambda x, y, w: F.linear(x, w) + F.linear(y, w),
               lambda f, x, y, w: f.add(f.linear(x, w, None, 3), f.linear(y, w, None, 3)),
               [((3, H), "fp32", trainable)], autocast="bf16"))


@pytest.mark.parametrize("trainable", [True, False], ids=["trained", "frozen"])
def test_autocast_weight_casts_made_in_forward(trainable):
    """The forward side of the cache, alone: one cast of a trained weight for two uses, two of a frozen
    one, and what the graph keeps."""
    c = Case([(X, "fp32", True), (X, "fp32", True)], lambda x, y, w: F.linear(x, w) + F.linear(y, w),
             lambda f, x, y, w: f.add(f.linear(x, w, None, 3), f.linear(y, w, None, 3)),
             [((3, H), "fp32", trainable)], autocast="bf16", backward=False)
    real, sim = run_both(c)
    assert sim == real
    x_cast, w_cast = 2 * 5 * H * 2, 3 * H * 2  # bf16 bytes
    # each mm saves the weight's cast (the input requires grad) and, when the weight trains, the input's
    assert real.saved_new == (2 * x_cast + 1 * w_cast if trainable else 2 * w_cast)


# -- batched matmul ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_matmul_3d(dtype):
    check(Case([(("B", "S", D), dtype, True), (("B", D, "S"), dtype, True)], torch.matmul,
               lambda f, a, b: f.matmul(a, b, ("B", "S", "S"))))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_matmul_4d_with_a_transposed_view(dtype):
    """q @ k.transpose(-1, -2) on contiguous (B, heads, S, d) tensors: ATen's matmul views both as 3-D
    (no copy) and the bmm saves the views."""
    q = ("B", HEADS, "S", D)
    check(Case([(q, dtype, True), (q, dtype, True)], lambda a, b: a @ b.transpose(-1, -2),
               lambda f, a, b: f.matmul(a, f.view(b, ("B", HEADS, D, "S")), ("B", HEADS, "S", "S"))))


def test_matmul_of_head_major_views_copies_both_operands():
    """q, k as attention makes them: (B, S, heads, d).transpose(1, 2). With B > 1 ATen's matmul cannot view
    them as (B*heads, ., .) and copies each (the copies are what the bmm saves)."""
    x = ("B", "S", HEADS, D)

    def sim(f, a, b):
        qv = f.view(a, ("B", HEADS, "S", D))
        kv = f.view(f.view(b, ("B", HEADS, "S", D)), ("B", HEADS, D, "S"))
        qm, km = f.copy(qv, op="matmul_reshape"), f.copy(kv, op="matmul_reshape")
        return f.matmul(qm, km, ("B", HEADS, "S", "S"))

    real, predicted = run_both(Case([(x, "fp32", True), (x, "fp32", True)],
                                    lambda a, b: a.transpose(1, 2) @ b.transpose(1, 2).transpose(-1, -2), sim))
    assert predicted == real
    assert real.saved_new == 2 * (2 * 5 * HEADS * D * 4)  # the two copies, by hand


def test_matmul_under_autocast():
    check(Case([(("B", "S", D), "fp32", True), (("B", D, "S"), "fp32", True)], torch.matmul,
               lambda f, a, b: f.matmul(a, b, ("B", "S", "S")), autocast="bf16"))


def test_matmul_under_autocast_operands_of_different_sizes():
    check(Case([(("B", "S", D), "fp32", True), (("B", D, 7), "fp32", True)], torch.matmul,
               lambda f, a, b: f.matmul(a, b, ("B", "S", 7)), autocast="bf16"))


# -- softmax, log_softmax, cross-entropy ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_softmax(dtype):
    check(Case([(X, dtype, True)], lambda x: F.softmax(x, dim=-1), lambda f, x: f.softmax(x)))


def test_softmax_with_fp32_dtype_on_bf16_input():
    """F.softmax(x, -1, dtype=float32) on the CPU: x.to(fp32) (a copy, not saved), then _softmax."""
    check(Case([(X, "bf16", True)], lambda x: F.softmax(x, dim=-1, dtype=torch.float32),
               lambda f, x: f.softmax(x, "fp32")))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_log_softmax(dtype):
    check(Case([(X, dtype, True)], lambda x: F.log_softmax(x, dim=-1), lambda f, x: f.log_softmax(x)))


def test_cross_entropy_is_log_softmax_and_nll_loss():
    """F.cross_entropy = log_softmax (saves its result) + nll_loss (mean: a scalar and its total weight)."""
    logits = ("B", "S", V)
    check(Case([(logits, "fp32", True)], lambda x, t: F.cross_entropy(x.view(-1, V), t.view(-1)),
               lambda f, x, t: f.nll_loss(f.log_softmax(x), t), ids=[(("B", "S"), V)]))


def test_cross_entropy_of_bf16_logits_upcast_first():
    """transformers' ForCausalLMLoss: logits.float(), then cross_entropy."""
    logits = ("B", "S", V)

    def real(x, t):
        logits = x.float()  # a local: alive until the loss returns
        return F.cross_entropy(logits.view(-1, V), t.view(-1))

    def sim(f, x, t):
        logits = f.to(x, "fp32")
        return f.nll_loss(f.log_softmax(logits), t)

    check(Case([(logits, "bf16", True)], real, sim, ids=[(("B", "S"), V)]))


def test_nll_loss_alone_saves_its_input():
    check(Case([(("B", V), "fp32", True)], lambda x, t: F.nll_loss(x, t),
               lambda f, x, t: f.nll_loss(x, t), ids=[(("B",), V)]))


# -- activations --------------------------------------------------------------------------------------------

SAVES_INPUT = {
    "silu": (F.silu, "SiluBackward0"),
    "gelu": (F.gelu, "GeluBackward0"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), "GeluBackward0"),
}
SAVES_OUTPUT = {
    "relu": (F.relu, "ReluBackward0"),
    "tanh": (torch.tanh, "TanhBackward0"),
    "sigmoid": (torch.sigmoid, "SigmoidBackward0"),
    "exp": (torch.exp, "ExpBackward0"),
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(SAVES_INPUT))
def test_activation_saving_its_input(name, dtype):
    fn, node = SAVES_INPUT[name]
    check(Case([(X, dtype, True)], fn, lambda f, x: f.unary_saves_input(x, node, name)))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(SAVES_OUTPUT))
def test_activation_saving_its_output(name, dtype):
    fn, node = SAVES_OUTPUT[name]
    check(Case([(X, dtype, True)], fn, lambda f, x: f.unary_saves_output(x, node, name)))


def test_rsqrt():
    check(Case([(X, "fp32", True)], torch.rsqrt, lambda f, x: f.rsqrt(x)))


# -- elementwise -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mul_both_require_grad(dtype):
    """Each factor is saved for the other's gradient."""
    check(Case([(X, dtype, True), (X, dtype, True)], torch.mul, lambda f, a, b: f.mul(a, b)))


def test_mul_only_one_requires_grad():
    """Only the factor the gradient needs is saved: b (for a's gradient)."""
    check(Case([(X, "fp32", True), (X, "fp32", False)], torch.mul, lambda f, a, b: f.mul(a, b)))


@pytest.mark.parametrize("trainable", [True, False], ids=["trained", "frozen"])
def test_mul_by_a_broadcast_weight(trainable):
    """RMSNorm's `weight * x`: the weight's gradient is grad * x in the broadcast shape, summed to (H,)."""
    check(Case([(X, "fp32", True)], lambda x, w: w * x, lambda f, x, w: f.mul(w, x), [((H,), "fp32", trainable)]))


def test_mul_of_mixed_dtypes_promotes_and_casts_gradients_back():
    check(Case([(X, "bf16", True), (X, "fp32", True)], torch.mul, lambda f, a, b: f.mul(a, b)))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_add(dtype):
    check(Case([(X, dtype, True), (X, dtype, True)], torch.add, lambda f, a, b: f.add(a, b)))


def test_add_broadcast_bias_is_reduced():
    check(Case([(X, "fp32", True)], lambda x, b: x + b, lambda f, x, b: f.add(x, b), [((H,), "fp32", True)]))


def test_add_of_mixed_dtypes():
    """bf16 + fp32 is fp32; the bf16 input's gradient is cast back (validate_outputs)."""
    check(Case([(X, "bf16", True), (X, "fp32", True)], torch.add, lambda f, a, b: f.add(a, b)))


def test_add_scalar():
    check(Case([(X, "fp32", True)], lambda x: x + 1e-6, lambda f, x: f.add(x)))


def test_sub():
    check(Case([(X, "fp32", True), (X, "fp32", True)], torch.sub, lambda f, a, b: f.sub(a, b)))


def test_sub_scalar():
    check(Case([(X, "fp32", True)], lambda x: x - 1.0, lambda f, x: f.sub(x)))


def test_div_by_a_tensor_without_grad():
    """DoRA's magnitude / weight_norm (the norm is detached): saves the divisor; grad / b."""
    check(Case([(X, "fp32", True), (X, "fp32", False)], torch.div, lambda f, a, b: f.div(a, b)))


def test_div_both_require_grad():
    check(Case([(X, "fp32", True), (X, "fp32", True)], torch.div, lambda f, a, b: f.div(a, b)))


def test_neg():
    check(Case([(X, "fp32", True)], torch.neg, lambda f, x: f.neg(x)))


@pytest.mark.parametrize("fn", [lambda x: x * 0.5, lambda x: x / 2.0, lambda x: 0.5 * x], ids=["mul", "div", "rmul"])
def test_scale_by_a_python_number(fn):
    check(Case([(X, "fp32", True)], fn, lambda f, x: f.scale(x)))


# -- RMSNorm pieces and RMSNorm ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mean_last(dtype):
    check(Case([(X, dtype, True)], lambda x: x.mean(-1, keepdim=True), lambda f, x: f.mean_last(x)))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_pow2_backward(dtype):
    """pow_backward, `grad * (2 * self.pow(1))` in one C++ expression: three x-sized tensors at once."""
    check(Case([(X, dtype, True)], lambda x: x.pow(2), lambda f, x: f.pow(x)))


def test_pow3_as_gelu_new_models_it():
    check(Case([(X, "fp32", True)], lambda x: x.pow(3),
               lambda f, x: f.pow(x)))


def _rms_norm_real(x, w):
    """transformers LlamaRMSNorm.forward."""
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + 1e-6)
    return w * h.to(dtype)


def _rms_norm_sim(f: Ops, x, w):
    """The same, line by line (`variance` is a local: it lives until the function returns)."""
    dtype = x.dtype
    h = f.to(x, "fp32")
    variance = f.mean_last(f.pow(h))
    h = f.mul(h, f.rsqrt(f.add(variance)))
    return f.mul(w, f.to(h, dtype))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_rms_norm_forward(dtype):
    check(Case([(X, dtype, True)], _rms_norm_real, _rms_norm_sim, [((H,), dtype, True)], backward=False))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_rms_norm_backward(dtype):
    check(Case([(X, dtype, True)], _rms_norm_real, _rms_norm_sim, [((H,), dtype, True)]))


# -- layer norm ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trained", "frozen"])
def test_layer_norm(dtype, trainable):
    """native_layer_norm: output, mean and rstd; saves input, mean, rstd; backward: input (and weight, bias)
    gradients."""
    check(Case([(X, dtype, True)], lambda x, w, b: F.layer_norm(x, (H,), w, b),
               lambda f, x, w, b: f.layer_norm(x, w, b), [((H,), dtype, trainable), ((H,), dtype, trainable)]))


def test_layer_norm_weight_without_bias():
    check(Case([(X, "fp32", True)], lambda x, w: F.layer_norm(x, (H,), w), lambda f, x, w: f.layer_norm(x, w, None),
               [((H,), "fp32", True)]))


def test_layer_norm_without_affine():
    check(Case([(X, "fp32", True)], lambda x: F.layer_norm(x, (H,)), lambda f, x: f.layer_norm(x, None, None)))


def test_layer_norm_mixed_dtypes():
    check(Case([(X, "bf16", True)], lambda x, w, b: F.layer_norm(x, (H,), w, b),
               lambda f, x, w, b: f.layer_norm(x, w, b), [((H,), "fp32", True), ((H,), "fp32", True)]))


# -- embedding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_embedding_trained(dtype):
    """index_select: a new (B, S, dim) tensor; saves the ids (they exist before the step); backward
    embedding_dense_backward: a weight-sized gradient."""
    check(Case([], lambda w, ids: F.embedding(ids, w), lambda f, w, ids: f.embedding(w, ids, H),
               [((V, H), dtype, True)], ids=[(("B", "S"), V)]))


def test_embedding_frozen_makes_only_its_output():
    check(Case([], lambda w, ids: F.embedding(ids, w), lambda f, w, ids: f.embedding(w, ids, H),
               [((V, H), "fp32", False)], ids=[(("B", "S"), V)], backward=False))


def test_embedding_of_ids_made_in_the_step_keeps_them():
    """Position ids made in the step (an arange, counted): the node saves them."""
    c = Case([(("B", "S"), "int64", False)], lambda pos, w: F.embedding(pos, w),
             lambda f, pos, w: f.embedding(w, pos, H), [((V, H), "fp32", True)])
    real, sim = run_both(c)
    assert sim == real
    assert real.saved_inputs == 2 * 5 * 8  # the ids


# -- dropout ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dropout_on_the_cpu_keeps_an_input_sized_noise(dtype):
    check(Case([(X, dtype, True)], lambda x: F.dropout(x, 0.1, training=True), lambda f, x: f.dropout(x, 0.1)))


def test_dropout_zero_is_the_input():
    check(Case([(X, "fp32", True)], lambda x: F.dropout(x, 0.0, training=True), lambda f, x: f.dropout(x, 0.0),
               backward=False))


# -- scaled_dot_product_attention (CPU flash kernel) ----------------------------------------------------------

QKV = ("B", HEADS, "S", D)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sdpa_flash_cpu_causal(dtype):
    """F.scaled_dot_product_attention without dropout on the CPU runs the flash kernel: output (query dtype)
    and logsumexp (fp32), all saved with q, k, v."""
    check(Case([(QKV, dtype, True)] * 3, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               lambda f, q, k, v: f.sdpa_flash_cpu(q, k, v, QKV, ("B", HEADS, "S"))))


def test_sdpa_flash_cpu_with_a_float_mask_made_in_the_step():
    check(Case([(QKV, "fp32", True)] * 3 + [(("B", 1, "S", "S"), "fp32", False)],
               lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
               lambda f, q, k, v, m: f.sdpa_flash_cpu(q, k, v, QKV, ("B", HEADS, "S"), m)))


def test_sdpa_flash_cpu_under_autocast():
    check(Case([(QKV, "fp32", True)] * 3, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               lambda f, q, k, v: f.sdpa_flash_cpu(q, k, v, QKV, ("B", HEADS, "S")), autocast="bf16"))


def test_sdpa_math_path_with_dropout_composed_from_the_operators():
    """With dropout on, CPU sdpa runs `_scaled_dot_product_attention_math`. Composed from stepsim's operators
    as the ATen function computes it (fp32): q * sqrt(scale) (a local until the function returns); the causal
    mask: ones, tril, a float `where`; k^T * sqrt(scale); the matmul (saves both scaled operands); + mask
    (out of place); softmax (saves its result); dropout (saves its noise); @ v."""
    def sim(f, q, k, v):
        s = f.sim
        qs = f.scale(q)
        ones = s.new(("S", "S"), "bool")
        tri = s.new(("S", "S"), "bool")
        del ones
        mask = s.new(("S", "S"), "fp32")
        del tri
        attn = f.matmul(qs, f.scale(k), ("B", HEADS, "S", "S"))
        attn = f.add(attn, mask)
        attn = f.softmax(attn)
        attn = f.dropout(attn, 0.1)
        return f.matmul(attn, v, QKV)

    check(Case([(QKV, "fp32", True)] * 3,
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True), sim))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sdpa_math_of_the_families(dtype):
    """families/layers.sdpa_math, the math path as the families call it, against the real kernel: in bf16 the
    ATen function upcasts q, k, v, returns `attn.to(origin_dtype)` beside the output (a (B, H, S, S) copy,
    dropped by the caller) and frees its locals only when it returns."""
    from types import SimpleNamespace

    from peftcalc.stepsim.families.layers import sdpa_math

    def sim(f, q, k, v):
        m = SimpleNamespace(f=f, sim=f.sim, cfg=SimpleNamespace(batch1=False))
        return sdpa_math(m, q, k, v, HEADS, D, 0.1, True, "S", "S", strided=False)

    check(Case([(QKV, dtype, True)] * 3,
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True), sim))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sdpa_math_with_one_key_head_broadcasts_it(dtype):
    """Multi-query attention given to sdpa without enable_gqa (Falcon): keys and values of one head broadcast
    over the query heads in the math path's matmuls, each a copy of every head for B > 1."""
    from types import SimpleNamespace

    from peftcalc.stepsim.families.layers import sdpa_math

    one = ("B", 1, "S", D)

    def sim(f, q, k, v):
        m = SimpleNamespace(f=f, sim=f.sim, cfg=SimpleNamespace(batch1=False))
        return sdpa_math(m, q, k, v, HEADS, D, 0.0, True, "S", "S", strided=False)

    check(Case([(QKV, dtype, True), (one, dtype, True), (one, dtype, True)],
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), sim))


# -- casts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src,dst", [("fp32", "bf16"), ("bf16", "fp32"), ("fp32", "fp16")])
def test_to_another_float_dtype(src, dst):
    check(Case([(X, src, True)], lambda x: x.to(TORCH[dst]), lambda f, x: f.to(x, dst)))


def test_to_the_same_dtype_is_the_tensor_itself():
    check(Case([(X, "fp32", True)], lambda x: x.to(torch.float32), lambda f, x: f.to(x, "fp32"), backward=False))


def test_to_an_integer_dtype_has_no_graph():
    check(Case([(X, "fp32", True)], lambda x: x.to(torch.int64), lambda f, x: f.to(x, "int64"), backward=False))


# -- views and copies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["view", "transpose", "reshape", "unsqueeze"])
def test_views_share_storage_and_pass_the_gradient(kind):
    real = {"view": lambda x: x.view(2, 5, 2, 4), "transpose": lambda x: x.transpose(1, 2),
            "reshape": lambda x: x.reshape(10, 8), "unsqueeze": lambda x: x.unsqueeze(1)}[kind]
    shape = {"view": ("B", "S", 2, 4), "transpose": ("B", H, "S"), "reshape": ("B", "S", H),
             "unsqueeze": ("B", 1, "S", H)}[kind]
    check(Case([(X, "fp32", True)], real, lambda f, x: f.view(x, shape)))


def test_expand_backward_sums_to_the_input_size():
    check(Case([(("B", 1, H), "fp32", True)], lambda x: x.expand(2, 5, H),
               lambda f, x: f.expand(x, ("B", "S", H))))


@pytest.mark.parametrize("kind", ["narrow", "select"])
def test_slice_backward_makes_an_input_sized_gradient(kind):
    real = {"narrow": lambda x: x[..., : H // 2], "select": lambda x: x[:, 0]}[kind]
    shape = {"narrow": ("B", "S", H // 2), "select": ("B", H)}[kind]
    check(Case([(X, "fp32", True)], real, lambda f, x: f.slice(x, shape)))


@pytest.mark.parametrize("kind", ["contiguous", "reshape", "clone"])
def test_copies(kind):
    """transpose(1, 2).contiguous() and .reshape() of the transposed tensor copy it; clone() copies; the
    gradient passes through (CloneBackward0 / views)."""
    real = {"contiguous": lambda x: x.transpose(1, 2).contiguous(),
            "reshape": lambda x: x.transpose(1, 2).reshape(2, 40),
            "clone": lambda x: x.clone()}[kind]

    def sim(f, x):  # concrete sizes: (B, H*S) has no symbolic single dimension
        if kind == "clone":
            return f.copy(x)
        t = f.view(x, (2, H, 5))
        return f.copy(t, (2, 40) if kind == "reshape" else None)

    check(Case([((2, 5, H), "fp32", True)], real, sim))


@pytest.mark.parametrize("grads", [(True, True), (True, False)], ids=["both", "one"])
def test_cat(grads):
    a, b = ("B", "S", 3), ("B", "S", 5)
    check(Case([(a, "fp32", grads[0]), (b, "fp32", grads[1])], lambda x, y: torch.cat([x, y], dim=-1),
               lambda f, x, y: f.cat([x, y], ("B", "S", 8))))


def test_split_backward_concatenates_the_pieces_gradients():
    """x.split(H, -1) (views, one SplitBackward0 node with two outputs, as prefix tuning's cache split):
    its backward makes one input-sized gradient from the pieces'."""
    from peftcalc.stepsim.ops import _bw_split

    def sim(f, x):
        node = f.sim.node("SplitBackward0", [x], [], _bw_split, n_out=2)
        a, b = (Tensor(("B", "S", H), "fp32", x.storage, node, i, True) for i in range(2))
        return f.add(f.scale(a), f.scale(b))

    def real(x):
        a, b = x.split(H, dim=-1)
        return a * 2.0 + b * 3.0

    check(Case([(("B", "S", 2 * H), "fp32", True)], real, sim))


# -- rotary embedding, as Llama applies it (slices, neg, cat, mul, add) ----------------------------------------


def test_rotate_half_and_apply_rotary():
    """transformers apply_rotary_pos_emb: q * cos + rotate_half(q) * sin, with cos/sin (1, S, d) made in
    the step and not requiring grad."""
    q, cs = ("B", HEADS, "S", D), (1, 1, "S", D)

    def rotate_half(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def real(x, cos, sin):
        return (x * cos) + (rotate_half(x) * sin)

    def sim(f, x, cos, sin):
        a = f.mul(x, cos)
        half = ("B", HEADS, "S", D // 2)
        x1, x2 = f.slice(x, half), f.slice(x, half)
        rot = f.cat([f.neg(x2), x1], q)
        del x1, x2
        b = f.mul(rot, sin)
        del rot
        return f.add(a, b)

    check(Case([(q, "fp32", True), (cs, "fp32", False), (cs, "fp32", False)], real, sim))


# -- custom autograd functions ----------------------------------------------------------------------------


def test_custom_function_saves_what_it_says_and_makes_one_gradient_per_input():
    """An autograd.Function saving its first input, returning a new tensor; its backward returns a new
    gradient for each input that requires grad (by hand: x's, not the frozen y's)."""
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x)
            return x * y

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x, None

    def sim(f, x, y):
        f.sim.op = "mul"
        out = f.sim.new(x.shape, x.dtype)
        return f.custom("FnBackward", [x, y], out, [x])

    real, predicted = run_both(Case([(X, "fp32", True), (X, "fp32", False)], Fn.apply, sim))
    assert predicted == real
    n = 2 * 5 * H * 4
    assert (real.saved_inputs, real.grads) == (n, [n])


# -- dtypes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DTYPE_BYTES))
def test_dtype_bytes_are_torch_element_sizes(name):
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int64": torch.int64,
                   "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8}[name]
    assert DTYPE_BYTES[name] == torch.empty((), dtype=torch_dtype).element_size()
