"""What family code builds on: the model's parameters by name, and each method's wrapper around a linear.

`Model` holds the simulation, the operators, the dtypes of the precision recipe and what the method
changed: which base weights train (full fine-tuning), which linears carry a LoRA/DoRA/IA3 wrapper (peft's
layer classes), which are quantized (QLoRA: bitsandbytes' Linear4bit / Linear8bitLt, per release), where
bottleneck adapters sit. Family code calls `m.linear(x, "model.layers.{i}.self_attn.q_proj")` and gets exactly what
the wrapped module computes.
"""

from __future__ import annotations

from typing import Any

from peftcalc.methods.base import Adaptation
from peftcalc.model.spec import Linear
from peftcalc.stepsim.engine import Sim, Tensor
from peftcalc.stepsim.ops import Ops
from peftcalc.stepsim.result import StepConfig



class Model:
    def __init__(self, sim: Sim, adaptation: Adaptation, cfg: StepConfig) -> None:
        self.sim = sim
        sim.accumulating = cfg.accumulating
        self.f = Ops(sim)
        self.f.device = cfg.device
        if cfg.uses_autocast:  # amp: the forward runs under torch.autocast(compute dtype)
            self.f.autocast = cfg.compute_dtype
        self.ad = adaptation
        self.spec = adaptation.spec
        self.arch = adaptation.spec.arch
        self.cfg = cfg
        self.dtype = cfg.param_dtype
        self.full = adaptation.trains_base
        self.layer = 0  # index substituted for "{i}"
        self._linears = {l.name: l for l in self.spec.linears}
        # per adapted linear: its LoRA rank (LoRA, DoRA, QLoRA) or its IA3 side ("in" / "out")
        self.lora_rank: dict[str, int] = {}
        self.ia3: dict[str, str] = {}
        self.quantized: dict[str, str] = {}
        for g in adaptation.tensors:
            if g.name.endswith(".lora_A.weight") and g.shape:
                self.lora_rank[g.name[: -len(".lora_A.weight")]] = g.shape[0]
            elif g.name.endswith(".ia3_l"):
                self.ia3[g.name[: -len(".ia3_l")]] = "in" if g.shape and g.shape[0] == 1 else "out"
            elif g.format != "dense":
                self.quantized[g.name[: -len(".weight")]] = g.format
        self.dora = adaptation.weight_decomposed
        # peft's modules_to_save: the forward runs a trainable copy of each such module (the original is kept,
        # frozen, and unused); by the original parameter's name
        self.copied = {g.name.replace(".modules_to_save.default.", ".") for g in adaptation.tensors
                       if ".modules_to_save.default." in g.name}
        self.adapter_sites = {g.name.split(".")[-3] for g in adaptation.tensors
                              if g.added and g.name.endswith(".down.weight")}
        self.adapter_width = next((g.shape[0] for g in adaptation.tensors if g.added and g.name.endswith(".down.weight")), 0)
        self.keep: list[Tensor] = []  # tensors the base model's forward holds in locals until it returns
        self.outer: list[Tensor] = []  # tensors the *ForCausalLM forward holds until it returns
        self.layer_args: tuple = ()  # tensors every layer receives (a checkpoint keeps them with its input)
        self.mask: Tensor | None = None  # the attention mask, when transformers builds one
        self.prefix_caches: dict = {}  # prefix tuning: each layer's key/value cache, alive until forward returns
        # tensors an autograd.Function keeps as a plain ctx attribute (not save_for_backward) in a checkpointed
        # layer's first forward, which checkpointing cannot drop (old bitsandbytes' MatMul4Bit input)
        self.ctx_held: list[Tensor] | None = None

    def end_model(self) -> None:
        """The base model's forward returned (before the head and the loss): its locals die."""
        self.keep.clear()
        self.layer_args = ()
        self.mask = None

    def end_forward(self) -> None:
        """The whole forward returned: only the loss and what autograd saved live on."""
        self.end_model()
        self.outer.clear()
        self.prefix_caches = {}
        self.f.autocast_cache.clear()

    # -- parameters -----------------------------------------------------------------------------------
    def weight(self, name: str, shape: tuple[int, ...], dtype: str | None = None, trainable: bool | None = None
               ) -> Tensor:
        """A base-model parameter: trainable in full fine-tuning, or as a modules_to_save copy."""
        if trainable is None:
            trainable = self.full or name in self.copied
        return self.sim.param(name, shape, dtype or self.dtype, trainable)

    def tied_head(self, embedding: str, emb_w: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The weight a head tied to the input embedding multiplies by. modules_to_save unties it (peft deep-copies
        the module): a trainable copy of lm_head, or, when only the embedding was copied, the frozen original."""
        if "lm_head.weight" in self.copied:
            return self.weight("lm_head.weight", shape, trainable=True)
        if embedding in self.copied:
            return self.weight(embedding, shape, trainable=False)
        return emb_w

    def added(self, name: str, shape: tuple[int, ...], dtype: str = "fp32") -> Tensor:
        """A parameter the method adds: trainable, in the adapter dtype (peft keeps adapters in fp32)."""
        return self.sim.param(name, shape, dtype, True)

    def spec_linear(self, name: str) -> Linear:
        return self._linears[name]

    # -- linears --------------------------------------------------------------------------------------
    def linear(self, x: Tensor, name: str, op: str = "mm") -> Tensor:
        """The module `name` applied to x: the base linear (dense, or QLoRA's quantized stand-in) and the
        method's wrapper around it."""
        lin = self._linears[name]
        if name in self.ia3 and self.ia3[name] == "in":
            x = self._ia3_input(x, lin)
        if name in self.quantized:
            result = self._quantized(x, lin, self.quantized[name])
        else:
            w = self.weight(name + ".weight", (lin.out_features, lin.in_features))
            b = self.weight(name + ".bias", (lin.out_features,)) if lin.bias else None
            result = self.f.linear(x, w, b, lin.out_features, op="addmm" if b is not None else op)
        if name in self.lora_rank and name in self.quantized:
            result = self._lora_bnb(x, result, lin, self.lora_rank[name], self.quantized[name] != "int8")
        elif name in self.lora_rank:
            result = self._lora(x, result, lin, self.lora_rank[name])
        if name in self.ia3 and self.ia3[name] == "out":
            result = self._ia3_output(result, lin)
        return result

    def _quantized(self, x: Tensor, lin: Linear, fmt: str) -> Tensor:
        """bitsandbytes' quantized linear. 4-bit (nn/modules.py Linear4bit.forward): x.to(compute dtype) (the
        BitsAndBytesConfig's bnb_4bit_compute_dtype; transformers always passes one, so `set_compute_type` never
        runs), `matmul_4bit` -> MatMul4Bit (autograd/_functions.py) when x requires grad, `.to(x's dtype)`. Its forward: since 0.50.0 one `gemm_4bit` operator (the dequantized weight lives only
        inside it: peftcalc/measure/allocator.py measures that), before it `F.linear(A, dequantize_4bit(B).to(A.dtype)
        .t(), bias)` in Python. It keeps `(None, B)` for backward, `(A, B)` before 0.43.2 (PR #1270): the input.
        8-bit: `_int8`."""
        f = self.f
        if fmt == "int8":
            return self._int8(x, lin)
        a = f.to(x, self.cfg.bnb_compute_dtype or self.cfg.compute_dtype)
        if self.cfg.bnb_python_dequant:
            w = self._dequantize_4bit(lin, a.dtype)
            self.sim.op = "linear"
            out = self.sim.new(a.shape[:-1] + (lin.out_features,), a.dtype)
            del w
        else:
            self.sim.op = "gemm_4bit"
            out = self.sim.new(a.shape[:-1] + (lin.out_features,), a.dtype)
        out = f.custom("MatMul4BitBackward", [a], out, [a] if self.cfg.bnb_keeps_input else [])
        if out.node is not None:
            out.node.backward = _dequant_backward(self, lin)
        elif self.cfg.bnb_keeps_input:
            self._hold_in_checkpoint(a)
        return f.to(out, x.dtype)

    def _hold_in_checkpoint(self, a: Tensor) -> None:
        """Inside the first forward of a non-reentrant checkpointed layer the graph is built and each node's ctx
        lives with it: `ctx.tensors = (A, B)` keeps A, which checkpointing (a saved-tensors hook) cannot drop."""
        if self.ctx_held is not None and not self.cfg.reentrant:  # (with checkpointing the inputs require grad)
            self.ctx_held.append(a)

    def _dequantize_4bit(self, lin: Linear, dtype: str) -> Tensor:
        """functional.dequantize_4bit(B, state).to(dtype): with double quantization the fp32 absmax first
        (dequantize_blockwise, then += offset in place); the weight in QuantState.dtype; a copy when `dtype`
        differs (the first one dies at once)."""
        sim = self.sim
        q = self.ad.quantization
        sim.op = "dequantize_4bit"
        absmax = sim.new((-(-lin.in_features * lin.out_features // 64),), "fp32") if q and q.double_quant else None
        w = sim.new((lin.out_features, lin.in_features), self.cfg.quant_dtype or self.dtype)
        del absmax
        if w.dtype != dtype:
            sim.op = "_to_copy"
            w = sim.new(w.shape, dtype)
        return w

    def _int8(self, x: Tensor, lin: Linear) -> Tensor:
        """bitsandbytes' Linear8bitLt in training on the CPU (autograd/_functions.py MatMul8bitFp): the weight
        dequantized (`CB.to(A.dtype).mul_(SCB.unsqueeze(1).mul(1/127))`), F.linear, and `ctx.A = A`: the input is
        kept for backward. (CUDA runs MatMul8bitLt instead, which keeps A too, plus the outlier columns.)"""
        sim = self.sim
        w = self._dequantize_int8(lin, x.dtype)
        sim.op = "linear"
        out = sim.new(x.shape[:-1] + (lin.out_features,), x.dtype)
        del w
        out = self.f.custom("MatMul8bitFpBackward", [x], out, [x])
        if out.node is not None:
            out.node.backward = _dequant_backward(self, lin, int8=True)
        else:
            self._hold_in_checkpoint(x)  # ctx.A = A: a ctx attribute too
        return out

    def _dequantize_int8(self, lin: Linear, dtype: str) -> Tensor:
        sim = self.sim
        sim.op = "dequantize_int8"
        w = sim.new((lin.out_features, lin.in_features), dtype)
        s = sim.new((lin.out_features, 1), "fp32")
        del s
        return w

    def _lora_bnb(self, x: Tensor, result: Tensor, lin: Linear, r: int, clone: bool) -> Tensor:
        """peft's lora.bnb Linear4bit / Linear8bitLt forward: `result.clone()` (4-bit only); x cast to the adapter
        dtype and the LoRA output cast back to the result's dtype *before* `result + output` (the plain lora.Linear
        adds first). peft skips both casts when `torch.is_autocast_enabled()`, which asks about CUDA only: under
        CPU autocast (the replayed device) they happen."""
        f = self.f
        if clone:
            result = f.add(result, None, "clone")
        expected = result.dtype
        xa = f.to(x, self.cfg.adapter_dtype)
        a_w = self.added(lin.name + ".lora_A.weight", (r, lin.in_features), self.cfg.adapter_dtype)
        b_w = self.added(lin.name + ".lora_B.weight", (lin.out_features, r), self.cfg.adapter_dtype)
        a = f.linear(xa, a_w, None, r)
        del xa
        b = f.linear(a, b_w, None, lin.out_features)
        del a
        b = f.to(f.scale(b), expected)
        return f.add(result, b)

    def _lora(self, x: Tensor, result: Tensor, lin: Linear, r: int) -> Tensor:
        """peft lora.Linear.forward: x cast to the adapter dtype (a copy per adapted module), lora_dropout (an
        nn.Dropout when p > 0: a new tensor and its mask), lora_A, lora_B,
        `* scaling` (a new tensor), `result + ...` (promoted to fp32), `.to(result dtype)`. DoRA: peft's
        DoraLinearLayer.forward instead (see `_dora`)."""
        f = self.f
        ad = self.cfg.adapter_dtype
        xa = f.to(x, ad)
        a_w = self.added(lin.name + ".lora_A.weight", (r, lin.in_features), ad)
        b_w = self.added(lin.name + ".lora_B.weight", (lin.out_features, r), ad)
        if self.dora:
            return self._dora(xa, result, lin, a_w, b_w, r)
        xa = f.dropout(xa, self.ad.lora_dropout)  # lora_dropout[adapter](x): lora_A keeps the dropped input
        a = f.linear(xa, a_w, None, r)
        del xa
        b = f.linear(a, b_w, None, lin.out_features)
        del a
        b = f.scale(b)
        dtype = result.dtype
        result = f.add(result, b)
        del b
        return f.to(result, dtype)

    def _dora(self, xa: Tensor, result: Tensor, lin: Linear, a_w: Tensor, b_w: Tensor, r: int) -> Tensor:
        """peft DoraLinearVariant.forward with lora_dropout 0 (base_result = result) and
        DoraLinearLayer.forward: the LoRA weight through an identity matrix (`lora_B(lora_A(eye))`, built
        with grad but only used detached), the base weight cast to the input dtype, the column norm of
        W + s*BA (detached), then (m/||.|| - 1) * base_result + m/||.|| * lora_B(lora_A(x)) * s."""
        f, sim = self.f, self.sim
        out_f, in_f = lin.out_features, lin.in_features
        ad = xa.dtype
        mag = self.added(lin.name + ".lora_magnitude_vector", (out_f,), ad)
        # get_lora_weight: eye (in x in), lora_A(eye) (in x r) saves eye, lora_B(...) (in x out) saves it; .T
        eye = sim.new((in_f, in_f), ad)
        ae = f.linear(eye, a_w, None, r)
        del eye
        lw = f.linear(ae, b_w, None, out_f)
        del ae
        lw = f.to(lw, ad)
        # get_weight_norm(weight.to(x.dtype), lora_weight.detach(), scaling): weight + s*lora_weight, norm
        sim.op = "dora_weight_norm"
        wcast = sim.new((out_f, in_f), ad) if self.dtype != ad else None
        slw = sim.new((in_f, out_f), ad)  # scaling * lora_weight
        wsum = sim.new((out_f, in_f), ad)  # weight + ...
        del slw
        norm = sim.new((out_f,), "fp32" if ad != "fp32" else ad)
        del wsum  # lw (with its graph: eye, lora_A(eye)) and the cast weight live until forward returns
        norm = f.to(norm, ad) if norm.dtype != ad else norm
        scale = f.div(mag, norm)  # magnitude / weight_norm -> (1, out)
        del norm
        a = f.linear(xa, a_w, None, r)
        lora_result = f.linear(a, b_w, None, out_f)
        del a
        m1 = f.sub(scale)  # mag_norm_scale - 1
        t1 = f.mul(m1, result)
        del m1
        t2 = f.mul(scale, lora_result)
        del lora_result, scale
        t2 = f.scale(t2)
        dora = f.add(t1, t2)
        del t1, t2
        dtype = result.dtype
        result = f.add(result, dora)
        del dora, lw, wcast
        return f.to(result, dtype)

    def _ia3_output(self, result: Tensor, lin: Linear) -> Tensor:
        """peft ia3.Linear.forward, not feed-forward: (base(x) * ia3_l.flatten()).to(result dtype);
        `1 * ia3_l` is a new small tensor."""
        f = self.f
        v = self.added(lin.name + ".ia3_l", (lin.out_features, 1))
        s = f.scale(f.view(v, (lin.out_features,)))
        dtype = result.dtype
        out = f.mul(result, s)
        return f.to(out, dtype)

    def _ia3_input(self, x: Tensor, lin: Linear) -> Tensor:
        """peft ia3.Linear.forward, feed-forward: (x.to(fp32) * ia3_l.flatten()).to(x dtype) into the base."""
        f = self.f
        v = self.added(lin.name + ".ia3_l", (1, lin.in_features))
        s = f.scale(f.view(v, (lin.in_features,)))
        dtype = x.dtype
        xf = f.to(x, v.dtype)
        out = f.mul(xf, s)
        del xf
        return f.to(out, dtype)

    def wrapped_param(self, name: str, w: Tensor) -> Tensor:
        """peft's ParamWrapper (LoRA on a bare parameter: MoE routers and fused experts under all-linear),
        as a parametrization active during the module's forward. Several experts, one adapter:
        `_LoraFactorsProxy`, one `baddbmm(W, lhs, rhs)` with the factors cast to W's dtype: a new W-sized tensor
        (saved by the grouped matmul that uses it; its gradient is W-sized in backward). One expert (a router):
        `W + delta_weight` with delta = (B @ A * scaling).to(W dtype)."""
        groups = {g.name: g for g in self.ad.tensors}
        a_g, b_g = groups.get(name + ".lora_A.weight"), groups.get(name + ".lora_B.weight")
        if a_g is None or b_g is None:
            return w
        f = self.f
        a = self.added(name + ".lora_A.weight", a_g.shape, self.cfg.adapter_dtype)
        b = self.added(name + ".lora_B.weight", b_g.shape, self.cfg.adapter_dtype)
        if len(w.shape) == 3:
            lhs, rhs = f.to(a, w.dtype), f.to(b, w.dtype)
            out = self.sim.new(w.shape, w.dtype)
            self.sim.op = "baddbmm"
            return f.custom("BaddbmmBackward0", [w, lhs, rhs], out, [lhs, rhs])
        delta = f.matmul(b, a, w.shape, op="mm")
        delta = f.to(f.scale(delta), w.dtype)
        return f.add(w, delta)

    def adapter(self, x: Tensor, site: str, prefix: str) -> Tensor:
        """peftcalc/measure/adapters.py's Bottleneck on a module output: x + up(relu(down(x.to(fp32)))).to(x)."""
        if site not in self.adapter_sites:
            return x
        f = self.f
        h, b = self.arch.hidden_size, self.adapter_width
        name = f"{prefix}.{site}"
        xf = f.to(x, "fp32")
        d = f.linear(xf, self.added(name + ".down.weight", (b, h)), self.added(name + ".down.bias", (b,)), b,
                     op="addmm")
        del xf
        d = f.unary_saves_output(d, "ReluBackward0", "relu")
        u = f.linear(d, self.added(name + ".up.weight", (h, b)), self.added(name + ".up.bias", (h,)), h, op="addmm")
        del d
        u = f.to(u, x.dtype)
        return f.add(x, u)


def _dequant_backward(m: Model, lin: Linear, int8: bool = False) -> Any:
    """MatMul4Bit.backward: `grad_A = torch.matmul(grad_output, F.dequantize_4bit(B, state).to(grad_output.dtype))`
    (every release); MatMul8bitFp.backward: `CB = state.CB.to(dtype_A, copy=True).mul_(...)`,
    `grad_A = torch.matmul(grad_output.to(dtype_A), CB)`. The frozen weight gets no gradient."""
    def bw(sim: Sim, n: Any, g: list) -> list:
        shape, dtype = n.inputs[0]
        w = m._dequantize_int8(lin, dtype) if int8 else m._dequantize_4bit(lin, dtype)
        sim.op = "mm"
        out = [sim.new(shape, dtype)]
        del w
        return out
    return bw
