"""Pieces every family shares: the peft prompt-learning input path, checkpointed layers, the causal-LM loss."""

from __future__ import annotations

from typing import Callable

from peftcalc.stepsim.engine import Sim, Tensor, layer_indices
from peftcalc.stepsim.model import Model


def run_stack(m: Model, stack: str, count: int, layer: Callable[..., Tensor], x: Tensor,
              args: tuple[Tensor | None, ...] = ()) -> Tensor:
    """Run the simulated layers of a stack (first, one middle, last): `layer(x, i, *args)`, each
    checkpointed when asked. `args` are the other tensors every layer receives (position embeddings, masks,
    the encoder's output), which torch.utils.checkpoint keeps alive with the layer input and through which
    gradients flow back out of a recomputed layer."""
    sim = m.sim
    for i in layer_indices(count):
        sim.enter_layer(stack, i, count)
        m.layer = i
        if m.cfg.checkpointing:
            x = checkpointed(m, lambda t, *a, i=i: layer(t, i, *a), x, args)
        else:
            x = layer(x, i, *args)
        sim.leave_layer(stack, i, count)
    return x


def checkpointed(m: Model, fn: Callable[..., Tensor], x: Tensor, args: tuple[Tensor | None, ...]) -> Tensor:
    """transformers' GradientCheckpointingLayer with torch.utils.checkpoint: the first forward keeps no saved
    tensors, only the layer's arguments (use_reentrant=False: a saved-tensors hook's holders; True:
    CheckpointFunction's ctx.save_for_backward of the inputs); the backward recomputes the layer and runs its
    backward (non-reentrant stops the recompute once the last saved tensor is back)."""
    sim = m.sim
    if not sim.grad_enabled:
        return fn(x, *args)
    tag, layer = sim.tag, m.layer
    sim.grad_enabled = False
    before = len(sim.params)
    m.ctx_held = []
    out = fn(x, *args)
    held, m.ctx_held = m.ctx_held, None
    sim.grad_enabled = True
    trains = any(p.trainable for p in sim.params[before:])
    del sim.params[before:]  # the recompute creates them again
    inputs = [x, *args]
    out.node = sim.node("CheckpointBackward", inputs, inputs, _recompute(m, fn, tag, layer, held), force=trains,
                        ctx=[t.storage if t is not None else None for t in inputs])
    out.requires_grad = out.node is not None
    return out


def _recompute(m: Model, fn: Callable[..., Tensor], tag: object, layer: int, held: list[Tensor]) -> Callable:
    """`held`: what the first forward's nodes keep outside their saved tensors (Model.ctx_held); freed once the
    layer's backward has run."""
    def backward(sim: Sim, n, g: list) -> list:
        was_tag, was_layer = sim.tag, m.layer
        sim.tag, m.layer = tag, layer
        sim.flush()
        first_node, first_event = len(sim.nodes), len(sim.events)
        leaves, inputs = [], []
        for meta, edge, st in zip(n.inputs, n.next, n.ctx):
            if meta is None:
                leaves.append(None)
                inputs.append(None)
                continue
            shape, dtype = meta
            if edge is not None:
                leaf = sim.capture(shape, dtype)
                leaves.append(leaf)
                inputs.append(Tensor(shape, dtype, st, None, 0, True, leaf))
            else:
                leaves.append(None)
                inputs.append(Tensor(shape, dtype, st))
        n.ctx = None  # the node releases its inputs with its saved tensors
        del st
        sim.grad_enabled = True
        sim.op = "recompute"
        cache, m.f.autocast_cache = m.f.autocast_cache, {}  # the recompute re-enters autocast: a fresh cache
        out = fn(*inputs)
        m.f.autocast_cache = cache
        sim.grad_enabled = False
        del inputs
        root = (out.node, out.out_index, g[0])
        del g
        if not m.cfg.reentrant:
            # non-reentrant (torch.utils.checkpoint use_reentrant=False): the recompute stops early and its
            # output is not kept; reentrant (CheckpointFunction.backward) recomputes the whole layer and holds
            # the recomputed outputs while `torch.autograd.backward(outputs, grads)` runs
            del out
            _early_stop(sim, first_node, first_event)
        nested = sim.nodes[first_node:]
        del sim.nodes[first_node:]
        sim.backward([root], nested)
        del root, nested
        out = None
        held.clear()
        sim.tag, m.layer = was_tag, was_layer
        return [leaf.grad if leaf is not None else None for leaf in leaves]
    return backward


def _early_stop(sim: Sim, first_node: int, first_event: int) -> None:
    """torch.utils.checkpoint stops recomputing once every saved tensor is back: forget the moments after
    the last allocation a recomputed node saved (the layer's tail, e.g. its output, is not recomputed)."""
    sim.flush()
    last = max((s.index for ref in sim.nodes[first_node:] if (n := ref()) is not None for s in n.saved), default=0)
    keep = [e for e in sim.events[first_event:] if e.index <= last]
    if keep is not sim.events[first_event:]:
        del sim.events[first_event:]
        sim.events.extend(keep)


def embedding_output(m: Model, x: Tensor) -> Tensor:
    """With gradient checkpointing transformers calls `enable_input_require_grads()`
    (modeling_utils.py `_activation_checkpointing_enable`): a forward hook makes the input embeddings' output
    require grad. For a frozen embedding that output becomes a leaf: its AccumulateGrad keeps it alive until
    backward ends, and its gradient is materialised there."""
    if m.cfg.checkpointing:
        return m.sim.require_grad(x)
    return x


def prompt_inputs(m: Model, embeds: Tensor) -> Tensor:
    """peft PeftModelForCausalLM.forward for prompt tuning / p-tuning: the prompt encoder's output
    (B, virtual, d) in fp32 (`get_prompt`), `.to(inputs_embeds.dtype)`, then cat in front of the token
    embeddings. Labels get -100 for the virtual tokens (`torch.cat((prefix_labels, labels))`)."""
    f, sim = m.f, m.sim
    n, d = m.ad.extra_tokens, m.arch.token_dim
    w = m.added("prompt_encoder.embedding.weight", (n * m.arch.stacks, d))
    sim.op = "prompt"
    prompts = f.embedding(w, sim.leaf((1, n), "int64"), d)  # get_prompt: one row, expanded to the batch
    if m.ad.prompt_encoder == "mlp":
        prompts = _ptuning_mlp(m, prompts, d)
    prompts = f.expand(prompts, ("B", n, d))
    prompts = f.to(prompts, embeds.dtype)
    out = f.cat([prompts, embeds], ("B", "T", d))
    sim.op = "prompt_labels"
    labels = [sim.new(("B", n), "int64"), sim.new(("B", "T"), "int64")]  # torch.full(-100), torch.cat with labels
    m.outer += [prompts, out] + labels  # locals of PeftModelForCausalLM.forward
    return out


def _ptuning_mlp(m: Model, x: Tensor, d: int) -> Tensor:
    """peft PromptEncoder (MLP reparameterization): Linear, ReLU, Linear, ReLU, Linear, all fp32."""
    f = m.f
    e = next(g.shape[0] for g in m.ad.tensors if g.name == "prompt_encoder.mlp_head.0.weight")
    h = f.linear(x, m.added("prompt_encoder.mlp_head.0.weight", (e, d)), m.added("prompt_encoder.mlp_head.0.bias", (e,)),
                 e, op="addmm")
    h = f.unary_saves_output(h, "ReluBackward0", "relu")
    h = f.linear(h, m.added("prompt_encoder.mlp_head.2.weight", (e, e)), m.added("prompt_encoder.mlp_head.2.bias", (e,)),
                 e, op="addmm")
    h = f.unary_saves_output(h, "ReluBackward0", "relu")
    return f.linear(h, m.added("prompt_encoder.mlp_head.4.weight", (d, e)), m.added("prompt_encoder.mlp_head.4.bias", (d,)),
                    d, op="addmm")


def causal_lm_loss(m: Model, logits: Tensor, vocab: int, shift: bool = True) -> Tensor:
    """transformers loss/loss_utils.py ForCausalLMLoss: `logits.float()` (a copy unless fp32), labels padded
    by one (`nn.functional.pad`) and shifted (`[..., 1:].contiguous()`: a copy for batch > 1), then
    cross_entropy = log_softmax (saved) + nll_loss. The caller keeps `logits` alive until the loss exists."""
    if shift and m.cfg.shift_copy:
        return _shifted_logits_loss(m, logits, vocab)
    f, sim = m.f, m.sim
    lf = f.to(logits, "fp32")
    sim.op = "constant_pad_nd"
    # (B, T + 1), sliced; batch > 1 copies (B, T): 8 bytes x B apart. ForMaskedLMLoss: the labels as given.
    shifted = sim.new(("B", "T"), "int64") if shift else sim.leaf(("B", "T"), "int64")
    flat = f.view(lf, ("B", "T", vocab))
    del lf
    logp = f.log_softmax(flat)
    del flat
    return f.nll_loss(logp, shifted)


def _shifted_logits_loss(m: Model, logits: Tensor, vocab: int) -> Tensor:
    """transformers before 4.49 (its ForCausalLMLoss and the models' own loss code before it): `logits =
    logits.float()`, `shift_logits = logits[..., :-1, :].contiguous()` (a second fp32 copy, both locals until
    the loss returns), `labels[..., 1:].contiguous()`, cross_entropy. In backward the slice's gradient is a
    full-size zeros tensor (`slice_backward`). transformers PR #35646 (January 2025, "removing unnecessary
    contiguous() call to reduce memory overhead") pads the labels instead. (T - 1 counted as T.)"""
    f, sim = m.f, m.sim
    lf = f.to(logits, "fp32")
    shifted_logits = f.copy(f.slice(lf, ("B", "T", vocab)), op="contiguous")
    sim.op = "slice_labels"
    labels = sim.new(("B", "T"), "int64")
    logp = f.log_softmax(f.view(shifted_logits, ("B", "T", vocab)))
    loss = f.nll_loss(logp, labels)
    del logp, shifted_logits, lf
    return loss


def prefix_cache(m: Model, stack: str, count: int, kv_heads: int, head_dim: int) -> None:
    """peft get_prompt for prefix tuning and transformers' DynamicCache: the prompt encoder's output
    (B, P, layers x 2 x kv_heads x head_dim) in fp32, `.to(model dtype)`, viewed/permuted and `split` into one
    (2, B, kv_heads, P, head_dim) view per layer; `cache.update` of each layer's key and value copies them
    (a cat with the empty cache). The selects' nodes come before every layer's, so their gradients (views of
    each layer's key/value gradient) wait until the end of backward."""
    from peftcalc.stepsim.engine import layer_indices, role
    from peftcalc.stepsim.ops import _bw_split

    f, sim = m.f, m.sim
    P = m.ad.prefix_tokens
    width = next(g.shape[1] for g in m.ad.tensors if g.name == "prompt_encoder.embedding.weight")
    trans = [g.shape for g in m.ad.tensors if g.name == "prompt_encoder.transform.2.weight"]
    full = trans[0][0] if trans else width
    kv_heads = max(1, full // (count * 2 * head_dim))  # peft's heads for the cache (its token_dim rule)
    w = m.added("prompt_encoder.embedding.weight", (P, width))
    sim.op = "prefix"
    pe = f.embedding(w, sim.leaf(("B", P), "int64"), width)
    if width != full:  # prefix_projection: Linear, Tanh, Linear (peft PrefixEncoder.transform)
        e = next(g.shape[0] for g in m.ad.tensors if g.name == "prompt_encoder.transform.0.weight")
        t = f.linear(pe, m.added("prompt_encoder.transform.0.weight", (e, width)),
                     m.added("prompt_encoder.transform.0.bias", (e,)), e, op="addmm")
        del pe
        t = f.unary_saves_output(t, "TanhBackward0", "tanh")
        pe = f.linear(t, m.added("prompt_encoder.transform.2.weight", (full, e)),
                      m.added("prompt_encoder.transform.2.bias", (full,)), full, op="addmm")
        del t
    pe = f.to(pe, m.dtype)
    layers = layer_indices(count)
    node = sim.node("SplitBackward0", [pe], [], _bw_split, n_out=len(layers))
    caches: dict[int, list] = {}
    for j, i in enumerate(layers):
        sim.tag = (stack, role(i, count))
        kv = Tensor((2, "B", kv_heads, P, head_dim), pe.dtype, pe.storage, node, j, node is not None)
        k = f.slice(kv, ("B", kv_heads, P, head_dim))
        v = f.slice(kv, ("B", kv_heads, P, head_dim))
        del kv
        caches[i] = [f.cat([k], k.shape), f.cat([v], v.shape)]
        del k, v
    sim.tag = None
    del pe
    m.prefix_caches = caches


def prefix_update(m: Model, k: Tensor, v: Tensor, kv_heads: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """DynamicCache.update: keys = cat([cached prefix, new keys]) (the cache holds it until forward ends)."""
    f = m.f
    cache = m.prefix_caches.get(m.layer)
    if cache is None:  # a checkpointed layer's recompute: transformers 5 drops the cache there (not measurable);
        p = m.sim.leaf(("B", kv_heads, m.ad.prefix_tokens, head_dim), k.dtype)  # estimated as if it were kept
        cache = [p, p]
    shape = ("B", kv_heads, "K", head_dim)
    cache[0] = f.cat([cache[0], k], shape)
    cache[1] = f.cat([cache[1], v], shape)
    return cache[0], cache[1]


# -- the head and the loss, by the setup's loss kind --------------------------------------------------------------
OUTPUT_CHUNKS = 8  # torchtune TransformerDecoder.num_output_chunks, set by CEWithChunkedOutputLoss (8 chunks)


def head_loss(m: Model, x: Tensor, head: Callable[[Tensor], Tensor], weight: Callable[[], Tensor], vocab: int,
              post: Callable[[Model, Tensor], Tensor] | None = None) -> Tensor:
    """The output head and the loss over the final hidden state `x` (B, T, h), as the setup's loss kind does it:
    "standard" (the whole logits, transformers' ForCausalLMLoss), "chunked" (torchtune's chunked output and
    CEWithChunkedOutputLoss) or "fused" (Liger's fused linear cross-entropy). `head` applies the output layer
    (with its adapters) to a tensor, `weight()` gives its weight, `post` a logit transform (Gemma2's soft-cap).
    The model output keeps `x` alive until forward returns."""
    m.outer.append(x)
    if m.cfg.loss == "fused":
        return fused_linear_cross_entropy(m, x, weight(), vocab)
    if m.cfg.loss == "chunked":
        return chunked_cross_entropy(m, x, head, vocab, post)
    logits = head(x)
    del x
    if post is not None:
        logits = post(m, logits)
    return causal_lm_loss(m, logits, vocab)


def chunked_cross_entropy(m: Model, x: Tensor, head: Callable[[Tensor], Tensor], vocab: int,
                          post: Callable[[Model, Tensor], Tensor] | None = None) -> Tensor:
    """torchtune: `TransformerDecoder.chunked_output` applies the output layer to `h.chunk(8, dim=1)` (one
    SplitBackward; the head's matmul flattens each non-contiguous chunk, a copy; the list of (B, T/8, V) logits
    lives until the recipe's `del logits` after the loss), and
    `CEWithChunkedOutputLoss.forward` counts the labels (`(labels != ignore_index).sum()`), reshapes each label
    chunk (a copy: a chunk of a batch is not contiguous), then sums `F.cross_entropy(chunk.float(), labels,
    reduction="sum")` over the chunks (one fp32 copy at a time, each chunk's fp32 log-softmax saved) and divides
    by the count. T/8 is the symbol Tc = ceil(T / 8)."""
    from peftcalc.stepsim.ops import _bw_split

    f, sim = m.f, m.sim
    h = x.shape[-1]
    node = sim.node("SplitBackward0", [x], [], _bw_split, n_out=OUTPUT_CHUNKS)
    logits = []
    for j in range(OUTPUT_CHUNKS):
        chunk = Tensor(("B", "Tc", h), x.dtype, x.storage, node, j, node is not None)
        chunk = f.copy(chunk, op="reshape")  # a chunk of a batch is not contiguous: the head's matmul copies it
        out = head(chunk)
        logits.append(post(m, out) if post is not None else out)
        del chunk, out
    sim.op = "labels_count"
    ne = sim.new(("B", "T"), "bool")
    count = sim.new((), "int64")
    del ne
    sim.op = "labels_chunk"
    labels = [sim.new(("B", "Tc"), "int64") for _ in range(OUTPUT_CHUNKS)]
    total = None
    for lg, lb in zip(logits, labels):
        lf = f.to(lg, "fp32")
        logp = f.log_softmax(lf)
        del lf
        loss = f.nll_loss(logp, lb)
        del logp
        total = f.add(loss) if total is None else f.add(total, loss)  # `0.0 + loss`, then `total + loss`
        del loss
    del labels, lb
    m.outer += logits  # freed with the forward's locals
    return f.div(total, count)


def fused_linear_cross_entropy(m: Model, x: Tensor, weight: Tensor, vocab: int) -> Tensor:
    """Liger's LigerFusedLinearCrossEntropyFunction (liger_kernel/ops/fused_linear_cross_entropy.py): the logits
    are never whole. Forward: grad_input = zeros_like(x), grad_weight = zeros_like(weight) when the head trains,
    loss_1d (B*T fp32); then per chunk of C = min(next_pow2(ceil(B*T / ceil(V / h))), B*T) rows: logits (C, V) in
    x's dtype, the cross-entropy kernel writing its gradient in place, grad_input[chunk] = grad_logits @ W (a
    (C, h) product copied in), grad_weight += (in place). Saves grad_input and grad_weight; backward hands them
    back (scaled in place when the upstream gradient is not 1)."""
    f, sim = m.f, m.sim
    h = x.shape[-1]
    x, weight = f.cast(x), f.cast(weight)
    sim.op = "liger_flce"
    grad_input = sim.new(x.shape, x.dtype)
    grad_weight = sim.new((vocab, h), weight.dtype) if weight.requires_grad and sim.grad_enabled else None
    loss_1d = sim.new(("B", "T"), "fp32")
    chunk = sim.new(("C", vocab), x.dtype)
    product = sim.new(("C", h), x.dtype)
    del product, chunk
    out = sim.new((), "fp32")
    del loss_1d
    node = sim.node("LigerFusedLinearCrossEntropyFunctionBackward", [x, weight],
                    [grad_input, grad_weight], _bw_hand_back(grad_input, grad_weight))
    del grad_input, grad_weight
    if node is not None:
        out.node, out.requires_grad = node, True
    return out


def _bw_hand_back(grad_input: Tensor, grad_weight: Tensor | None) -> Callable:
    """The backward of a function that computed its gradients in forward: the saved storages, handed back."""
    metas = [(grad_input.shape, grad_input.dtype)] + ([(grad_weight.shape, grad_weight.dtype)] if grad_weight else [])

    def backward(sim: Sim, n, g: list) -> list:
        held = [Tensor(shape, dtype, st) for (shape, dtype), st in zip(metas, n.saved)]
        out: list = [held[0] if n.next[0] is not None else None,
                     held[1] if len(held) > 1 and n.next[1] is not None else None]
        del held
        return out
    return backward
