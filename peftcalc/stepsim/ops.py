"""Operators: what each one allocates in forward, what its node saves, what its derivative allocates.

Each operator follows ATen on the CPU (torch 2.13) and its derivative formula in torch's
`tools/autograd/derivatives.yaml`; the docstrings say which. Shapes are tuples of ints and symbols.
An operator returns a new tensor (new storage) or a view (shared storage), as ATen does.
"""

from __future__ import annotations

from typing import Sequence

from peftcalc.stepsim.engine import FLOATS, Node, Sim, Tensor, promote
from peftcalc.stepsim.poly import Dim


def _broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _out(sim: Sim, t: Tensor, node: Node | None) -> Tensor:
    if node is not None:
        t.node, t.requires_grad = node, True
    return t


class Ops:
    """The operators, bound to one simulation."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.autocast: str | None = None  # torch.autocast's lower-precision dtype, when the forward runs under it
        self.device = "cpu"  # where the step runs: "cuda" picks the CUDA kernels where they keep other tensors
        self.autocast_cache: dict[object, Tensor] = {}

    def cast(self, t: Tensor | None) -> Tensor | None:
        """torch.autocast's cached_cast for the lower-precision ops (CPU: linear, mm, addmm, bmm, baddbmm, matmul,
        scaled_dot_product_attention): a floating tensor of another dtype is cast (a copy); the cast of a leaf
        that requires grad (a trainable parameter) is cached until autocast exits, a frozen weight's is not.
        Callers cast an operator's arguments right to left, as torch's autocast wrapper does (a C++ parameter
        pack expanded right to left by GCC: linear's bias, weight, input; matmul's other, then self), which
        decides the order the cast-back nodes run in backward."""
        if self.autocast is None or t is None or t.dtype == self.autocast or t.dtype not in FLOATS:
            return t
        if t.param is not None and t.requires_grad:  # autocast caches whatever the grad mode (a checkpointed pass too)
            # a model weight by its name and layer (the replay makes a new Param at each use; a checkpointed pass
            # drops its Params, whose ids Python reuses), a checkpoint's detached input by identity
            key = id(t.param) if t.param.capture else (t.param.name, t.param.tag)
            hit = self.autocast_cache.get(key)
            if hit is None:
                hit = self.autocast_cache[key] = self.to(t, self.autocast)
            return hit
        return self.to(t, self.autocast)

    def _cuda_autocast_fp32(self, x: Tensor) -> Tensor:
        """CUDA autocast's "ops that can autocast to float32" (layer_norm, softmax among them; torch's Automatic
        Mixed Precision docs): a half input is cast to fp32 first. The CPU's list has neither."""
        if self.device == "cuda" and self.autocast is not None and x.dtype in ("bf16", "fp16"):
            return self.to(x, "fp32")
        return x

    def _new(self, shape: tuple[Dim, ...], dtype: str, op: str) -> Tensor:
        self.sim.op = op
        return self.sim.new(shape, dtype)

    # -- views and copies -----------------------------------------------------------------------------
    def view(self, x: Tensor, shape: tuple[Dim, ...]) -> Tensor:
        """view/reshape of a contiguous tensor, transpose, permute, unsqueeze, expand-free: same storage.
        Backward: a view of the gradient (reshape of a contiguous gradient)."""
        node = self.sim.node("ViewBackward0", [x], [], _bw_view)
        return _out(self.sim, Tensor(shape, x.dtype, x.storage), node)

    def expand(self, x: Tensor, shape: tuple[Dim, ...]) -> Tensor:
        """expand: same storage. Backward: sum_to_size (validate_outputs reduces it)."""
        node = self.sim.node("ExpandBackward0", [x], [], _bw_view)
        return _out(self.sim, Tensor(shape, x.dtype, x.storage), node)

    def slice(self, x: Tensor, shape: tuple[Dim, ...]) -> Tensor:
        """x[..., a:b] (narrow/slice/select): same storage. Backward: `slice_backward` builds a zero tensor of
        the input's size and copies the gradient in (a new full-size tensor)."""
        node = self.sim.node("SliceBackward0", [x], [], _bw_full_zeros)
        return _out(self.sim, Tensor(shape, x.dtype, x.storage), node)

    def copy(self, x: Tensor, shape: tuple[Dim, ...] | None = None, op: str = "clone") -> Tensor:
        """contiguous()/reshape() of a non-contiguous tensor, clone(): a new storage. Backward: passes the
        gradient through (CloneBackward0 / a view)."""
        shape = x.shape if shape is None else shape
        out = self._new(shape, x.dtype, op)
        node = self.sim.node("CloneBackward0", [x], [], _bw_view)
        return _out(self.sim, out, node)

    def to(self, x: Tensor, dtype: str) -> Tensor:
        """Tensor.to(dtype): the same tensor when the dtype is unchanged, else a copy. Backward (ToCopyBackward0):
        the gradient cast back, a new tensor."""
        if x.dtype == dtype:
            return x
        out = self._new(x.shape, dtype, "_to_copy")
        if dtype not in FLOATS:  # an integer tensor cannot require grad: the graph stops here
            return out
        node = self.sim.node("ToCopyBackward0", [x], [], _bw_cast)
        return _out(self.sim, out, node)

    # -- elementwise ----------------------------------------------------------------------------------
    def add(self, a: Tensor, b: Tensor | None = None, op: str = "add") -> Tensor:
        """a + b (b None: a + scalar). Saves nothing; backward passes the same gradient to both inputs
        (validate_outputs reduces broadcast ones)."""
        shape = a.shape if b is None else _broadcast(a.shape, b.shape)
        out = self._new(shape, a.dtype if b is None else promote(a.dtype, b.dtype), op)
        node = self.sim.node("AddBackward0", [a, b] if b is not None else [a], [], _bw_pass)
        return _out(self.sim, out, node)

    def sub(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """a - b: backward passes grad to a and allocates -grad for b."""
        if b is None:
            return self.add(a, None, "sub")
        out = self._new(_broadcast(a.shape, b.shape), promote(a.dtype, b.dtype), "sub")
        node = self.sim.node("SubBackward0", [a, b], [], _bw_sub)
        return _out(self.sim, out, node)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        """a * b. Saves b when a requires grad and a when b does (`mul_tensor_backward`); backward computes
        grad * other for each input that requires grad (broadcast shape), then reduces."""
        out = self._new(_broadcast(a.shape, b.shape), promote(a.dtype, b.dtype), "mul")
        saved = [b if a.requires_grad else None, a if b.requires_grad else None]
        node = self.sim.node("MulBackward0", [a, b], saved, _bw_mul, ctx=out.shape)
        return _out(self.sim, out, node)

    def scale(self, a: Tensor, op: str = "mul") -> Tensor:
        """a * python scalar (or / scalar): new tensor, saves nothing; backward grad * scalar (new)."""
        out = self._new(a.shape, a.dtype, op)
        node = self.sim.node("MulBackward1", [a], [], _bw_unary_new)
        return _out(self.sim, out, node)

    def div(self, a: Tensor, b: Tensor) -> Tensor:
        """a / b. Saves b (for a's gradient) and a, b (for b's). Backward: grad / b for a; for b
        `-grad * ((self / other) / other)` in one C++ expression (its temporaries live until the product)."""
        out = self._new(_broadcast(a.shape, b.shape), promote(a.dtype, b.dtype), "div")
        saved = [b, a if b.requires_grad else None]
        node = self.sim.node("DivBackward0", [a, b], saved, _bw_div, ctx=out.shape)
        return _out(self.sim, out, node)

    def neg(self, a: Tensor) -> Tensor:
        out = self._new(a.shape, a.dtype, "neg")
        node = self.sim.node("NegBackward0", [a], [], _bw_unary_new)
        return _out(self.sim, out, node)

    def pow(self, x: Tensor) -> Tensor:
        """x.pow(n), n a Python number (2 in RMSNorm, 3 in gelu_new). Saves x. Backward (`pow_backward`):
        `grad * (n * self.pow(n - 1))`, one C++ expression: self.pow(n - 1) and n * (...) live until the
        product exists (three x-sized tensors at once)."""
        out = self._new(x.shape, x.dtype, "pow")
        node = self.sim.node("PowBackward0", [x], [x], _bw_pow)
        return _out(self.sim, out, node)

    def unary_saves_input(self, x: Tensor, name: str, op: str) -> Tensor:
        """silu, gelu (exact or tanh), sigmoid-free activations: saves the input; the backward kernel
        (`silu_backward`, `gelu_backward`) allocates one tensor."""
        out = self._new(x.shape, x.dtype, op)
        node = self.sim.node(name, [x], [x], _bw_unary_new)
        return _out(self.sim, out, node)

    def unary_saves_output(self, x: Tensor, name: str, op: str) -> Tensor:
        """relu, tanh, sigmoid, exp: saves the result; backward allocates one tensor (rsqrt: `rsqrt`)."""
        out = self._new(x.shape, x.dtype, op)
        node = self.sim.node(name, [x], [], _bw_unary_new)
        if node is not None:
            node.saved.append(out.storage)
        return _out(self.sim, out, node)

    def rsqrt(self, x: Tensor) -> Tensor:
        """torch.rsqrt: saves its result. Backward `-0.5 * grad * result.pow(3)`, one C++ expression: -0.5*grad
        and result.pow(3) live until their product exists (three result-sized tensors at once)."""
        out = self._new(x.shape, x.dtype, "rsqrt")
        node = self.sim.node("RsqrtBackward0", [x], [], _bw_three_temporaries)
        if node is not None:
            node.saved.append(out.storage)
        return _out(self.sim, out, node)

    def mean_last(self, x: Tensor) -> Tensor:
        """x.mean(-1, keepdim=True): saves nothing; backward `mean_backward` = grad.expand(x) / n (new)."""
        out = self._new(x.shape[:-1] + (1,), x.dtype, "mean")
        node = self.sim.node("MeanBackward1", [x], [], _bw_full_new)
        return _out(self.sim, out, node)

    def cat(self, xs: Sequence[Tensor], shape: tuple[Dim, ...]) -> Tensor:
        """torch.cat: new tensor; saves nothing; backward hands each input a narrow view of the gradient."""
        out = self._new(shape, xs[0].dtype, "cat")
        node = self.sim.node("CatBackward0", list(xs), [], _bw_cat)
        return _out(self.sim, out, node)

    def dropout(self, x: Tensor, p: float) -> Tensor:
        """nn.functional.dropout in training. On the CPU (ATen `_dropout_impl`): p == 0 returns the input; else
        a noise tensor of the input's dtype and size (`empty_like().bernoulli_().div_()`), and input * noise,
        whose node saves the noise. (CUDA's fused `native_dropout` keeps a 1-byte mask instead.)"""
        if p == 0:
            return x
        if self.device == "cuda":  # ATen is_fused_kernel_acceptable: native_dropout (output, bool mask), saves mask
            out = self._new(x.shape, x.dtype, "native_dropout")
            mask = self._new(x.shape, "bool", "native_dropout")
            node = self.sim.node("NativeDropoutBackward0", [x], [mask], _bw_unary_new)
            return _out(self.sim, out, node)
        noise = self._new(x.shape, x.dtype, "bernoulli")
        out = self._new(x.shape, x.dtype, "mul")
        node = self.sim.node("MulBackward0", [x], [noise], _bw_unary_new)
        return _out(self.sim, out, node)

    # -- linear algebra -------------------------------------------------------------------------------
    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None, out_features: int, op: str = "mm") -> Tensor:
        """F.linear (mm/addmm on the flattened input; GPT-2's Conv1D the same with the weight transposed).
        Saves the input when the weight requires grad, the weight when the input does (no bytes for a
        parameter; a weight computed in the step, e.g. peft's parametrized experts, stays alive).
        Backward: grad @ W for the input, grad^T @ x for the weight (stolen by AccumulateGrad), the bias
        gradient by reducing grad (validate_outputs)."""
        bias, w = self.cast(bias), self.cast(w)  # autocast casts right to left (see `cast`)
        x = self.cast(x)
        out = self._new(x.shape[:-1] + (out_features,), x.dtype, op)
        inputs = [x, w] + ([bias] if bias is not None else [])
        node = self.sim.node("AddmmBackward0" if bias is not None else "MmBackward0", inputs,
                             [x if w.requires_grad else None, w if x.requires_grad else None], _bw_linear)
        return _out(self.sim, out, node)

    def matmul(self, a: Tensor, b: Tensor, shape: tuple[Dim, ...], saved: Sequence[Tensor | None] | None = None,
               op: str = "bmm") -> Tensor:
        """Batched matmul (attention scores, probs @ values): saves both operands (as given: the caller passes
        the contiguous copies ATen's matmul makes of non-contiguous operands). Backward: one new tensor per
        operand that requires grad."""
        b = self.cast(b)  # autocast casts right to left (see `cast`)
        a = self.cast(a)
        out = self._new(shape, promote(a.dtype, b.dtype), op)
        sv = list(saved) if saved is not None else [b if a.requires_grad else None, a if b.requires_grad else None]
        node = self.sim.node("BmmBackward0", [a, b], sv, _bw_each_input)
        return _out(self.sim, out, node)

    def embedding(self, w: Tensor, ids: Tensor, dim: int) -> Tensor:
        """F.embedding: new (ids..., dim) tensor; saves the indices (new bytes only when the indices were made
        in the step, e.g. position ids). Backward: `embedding_dense_backward`, a new weight-sized gradient."""
        out = self._new(ids.shape + (dim,), w.dtype, "embedding")
        node = self.sim.node("EmbeddingBackward0", [w], [ids], _bw_each_input)
        return _out(self.sim, out, node)

    # -- normalisation and softmax --------------------------------------------------------------------
    def layer_norm(self, x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        """native_layer_norm: output, mean and rstd ((..., 1), in the input dtype on the CPU, fp32 on CUDA). Saves
        input, mean, rstd (and the weight). Under CUDA autocast layer_norm runs in fp32 (a cast copy first). Backward: `native_layer_norm_backward` allocates the input, weight and
        bias gradients."""
        x = self._cuda_autocast_fp32(x)
        out = self._new(x.shape, x.dtype, "native_layer_norm")
        # CUDA keeps mean/rstd in its acc type, float; the CPU kernel in the input dtype, except a low-precision
        # input with fp32 weights (mixed): then fp32 too (aten/src/ATen/native/cpu/layer_norm_kernel.cpp, `mixed_type`)
        mixed = w is not None and w.dtype == "fp32" and x.dtype != "fp32"
        stat_dtype = "fp32" if self.device == "cuda" or mixed else x.dtype
        mean = self._new(x.shape[:-1] + (1,), stat_dtype, "native_layer_norm")
        rstd = self._new(x.shape[:-1] + (1,), stat_dtype, "native_layer_norm")
        node = self.sim.node("NativeLayerNormBackward0", [x, w, b], [x, mean, rstd], _bw_each_input)
        return _out(self.sim, out, node)

    def softmax(self, x: Tensor, dtype: str | None = None) -> Tensor:
        """F.softmax(x, dim=-1, dtype=...): on the CPU a dtype different from the input's is a copy first
        (freed after), then `_softmax`, whose node saves its result. Backward `_softmax_backward_data`: one
        new tensor (then the cast back, for a dtype copy). Under CUDA autocast softmax runs in fp32."""
        x = self.to(x, dtype) if dtype is not None else self._cuda_autocast_fp32(x)
        out = self._new(x.shape, x.dtype, "_softmax")
        node = self.sim.node("SoftmaxBackward0", [x], [], _bw_unary_new)
        if node is not None:
            node.saved.append(out.storage)
        return _out(self.sim, out, node)

    def log_softmax(self, x: Tensor) -> Tensor:
        out = self._new(x.shape, x.dtype, "_log_softmax")
        node = self.sim.node("LogSoftmaxBackward0", [x], [], _bw_unary_new)
        if node is not None:
            node.saved.append(out.storage)
        return _out(self.sim, out, node)

    def nll_loss(self, logp: Tensor, target: Tensor) -> Tensor:
        """nll_loss (mean): a scalar and its total weight; saves its input, the target and the total weight
        (derivatives.yaml: nll_loss_backward takes self; after log_softmax the same storage). Backward
        `nll_loss_backward`: a zero tensor of the input's size with the gradient scattered in."""
        out = self._new((), logp.dtype, "nll_loss_forward")
        total_weight = self._new((), logp.dtype, "nll_loss_forward")
        node = self.sim.node("NllLossBackward0", [logp], [logp, target, total_weight], _bw_full_new)
        return _out(self.sim, out, node)

    def sdpa_flash_cpu(self, q: Tensor, k: Tensor, v: Tensor, out_shape: tuple[Dim, ...],
                       lse_shape: tuple[Dim, ...], mask: Tensor | None = None) -> Tensor:
        """`_scaled_dot_product_flash_attention_for_cpu`: output (in the query's dtype) and logsumexp (fp32);
        saves q, k, v, output, logsumexp (and the mask). Backward: new gradients of q, k and v; its scratch
        buffers live inside the kernel (not counted, as the traced backend does not see them)."""
        v, k = self.cast(v), self.cast(k)  # autocast casts right to left (see `cast`)
        q = self.cast(q)
        out = self._new(out_shape, q.dtype, "_scaled_dot_product_flash_attention_for_cpu")
        lse = self._new(lse_shape, "fp32", "_scaled_dot_product_flash_attention_for_cpu")
        node = self.sim.node("ScaledDotProductFlashAttentionForCpuBackward0", [q, k, v], [q, k, v, out, lse, mask],
                             _bw_each_input)
        return _out(self.sim, out, node)

    # -- custom: one node with given saved tensors and gradient sizes ------------------------------------
    def custom(self, name: str, inputs: Sequence[Tensor | None], out: Tensor, saved: Sequence[Tensor | None]
               ) -> Tensor:
        """An autograd.Function of our own (QLoRA's dequantizing matmul): saves what it says; backward makes
        one new gradient per input that requires grad."""
        node = self.sim.node(name, list(inputs), list(saved), _bw_each_input)
        return _out(self.sim, out, node)


# ---- derivative formulas: (sim, node, output grads) -> input grads -----------------------------------------

def _like(sim: Sim, meta: tuple | None) -> Tensor | None:
    if meta is None:
        return None
    shape, dtype = meta
    return sim.new(shape, dtype)


def _bw_view(sim: Sim, n: Node, g: list) -> list:
    return [g[0]]


def _bw_pass(sim: Sim, n: Node, g: list) -> list:
    return [g[0] if m is not None else None for m in n.inputs]


def _bw_cast(sim: Sim, n: Node, g: list) -> list:
    return [_like(sim, n.inputs[0])]


def _bw_full_zeros(sim: Sim, n: Node, g: list) -> list:
    return [_like(sim, n.inputs[0])]


def _bw_full_new(sim: Sim, n: Node, g: list) -> list:
    return [_like(sim, n.inputs[0])]


def _bw_unary_new(sim: Sim, n: Node, g: list) -> list:
    return [sim.new(g[0].shape, n.inputs[0][1])]


def _bw_each_input(sim: Sim, n: Node, g: list) -> list:
    return [_like(sim, m) if e is not None else None for m, e in zip(n.inputs, n.next)]


def _bw_sub(sim: Sim, n: Node, g: list) -> list:
    out = [g[0] if n.next[0] is not None else None]
    out.append(sim.new(g[0].shape, g[0].dtype) if n.next[1] is not None else None)
    return out


def _bw_mul(sim: Sim, n: Node, g: list) -> list:
    """grad * other for each input needing a gradient, in the broadcast shape and the promoted dtype."""
    shape = n.ctx
    out = []
    for m, e in zip(n.inputs, n.next):
        out.append(sim.new(shape, g[0].dtype) if e is not None else None)
    return out


def _bw_three_temporaries(sim: Sim, n: Node, g: list) -> list:
    """`c * grad * f(result)` in one expression (rsqrt): two temporaries live until the product exists."""
    shape, dtype = n.inputs[0]
    t1 = sim.new(shape, dtype)
    t2 = sim.new(shape, dtype)
    out = sim.new(shape, dtype)
    del t1, t2
    return [out]


def _bw_div(sim: Sim, n: Node, g: list) -> list:
    """div_tensor_self_backward (grad / other) and div_tensor_other_backward (-grad * ((self / other) / other))."""
    shape = n.ctx
    dtype = g[0].dtype
    ga = sim.new(shape, dtype) if n.next[0] is not None else None
    gb = None
    if n.next[1] is not None:
        neg = sim.new(shape, dtype)  # -grad
        q1 = sim.new(shape, dtype)  # self / other
        q2 = sim.new(shape, dtype)  # (...) / other
        del q1
        gb = sim.new(shape, dtype)  # the product
        del neg, q2
    return [ga, gb]


def _bw_pow(sim: Sim, n: Node, g: list) -> list:
    shape, dtype = n.inputs[0]
    t1 = sim.new(shape, dtype)  # self.pow(exponent - 1)
    t2 = sim.new(shape, dtype)  # exponent * (...)
    out = sim.new(shape, dtype)  # grad * (...): the temporaries die with the expression, after it
    del t1, t2
    return [out]


def _bw_cat(sim: Sim, n: Node, g: list) -> list:
    return [Tensor(m[0], m[1], g[0].storage) if e is not None else None for m, e in zip(n.inputs, n.next)]


def _bw_linear(sim: Sim, n: Node, g: list) -> list:
    """addmm/mm: the bias gets the output gradient itself (reduced by validate_outputs), the input grad @ W,
    the weight grad^T @ x."""
    x, w = n.next[0], n.next[1]
    out = [_like(sim, n.inputs[0]) if x is not None else None,
           _like(sim, n.inputs[1]) if w is not None else None]
    if len(n.inputs) > 2:
        out.append(g[0] if n.next[2] is not None else None)
    return out


def _bw_split(sim: Sim, n: Node, g: list) -> list:
    """SplitBackward: the pieces' gradients concatenated into one input-sized gradient."""
    return [_like(sim, n.inputs[0])]
