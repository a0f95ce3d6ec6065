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
    """transformers' GradientCheckpointingLayer with torch.utils.checkpoint(use_reentrant=False): the first
    forward keeps no saved tensors, only the layer's arguments; the backward recomputes the layer (stopping
    early, once the last saved tensor is recomputed) and runs its backward."""
    sim = m.sim
    if not sim.grad_enabled:
        return fn(x, *args)
    tag, layer = sim.tag, m.layer
    sim.grad_enabled = False
    before = len(sim.params)
    out = fn(x, *args)
    sim.grad_enabled = True
    trains = any(p.trainable for p in sim.params[before:])
    del sim.params[before:]  # the recompute creates them again
    inputs = [x, *args]
    out.node = sim.node("CheckpointBackward", inputs, inputs, _recompute(m, fn, tag, layer), force=trains,
                        ctx=[t.storage if t is not None else None for t in inputs])
    out.requires_grad = out.node is not None
    return out


def _recompute(m: Model, fn: Callable[..., Tensor], tag: object, layer: int) -> Callable:
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
        del out, g
        _early_stop(sim, first_node, first_event)
        nested = sim.nodes[first_node:]
        del sim.nodes[first_node:]
        sim.backward([root], nested)
        del root, nested
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
    f, sim = m.f, m.sim
    lf = f.to(logits, "fp32")
    sim.op = "constant_pad_nd"
    # (B, T + 1), sliced; batch > 1 copies (B, T): 8 bytes x B apart. ForMaskedLMLoss: the labels as given.
    shifted = sim.new(("B", "T"), "int64") if shift else sim.leaf(("B", "T"), "int64")
    flat = f.view(lf, ("B", "T", vocab))
    del lf
    logp = f.log_softmax(flat)
    return f.nll_loss(logp, shifted)  # `logits` is a local of ForCausalLMLoss: alive until the loss exists


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
