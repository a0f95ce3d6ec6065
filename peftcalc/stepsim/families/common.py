"""Pieces every family shares: the peft prompt-learning input path, checkpointed layers, the causal-LM loss."""

from __future__ import annotations

from typing import Callable

from peftcalc.stepsim.engine import Event, Sim, Tensor, layer_indices
from peftcalc.stepsim.model import Model


def run_stack(m: Model, stack: str, count: int, layer: Callable[[Tensor, int], Tensor], x: Tensor,
              saved_with_input: tuple[Tensor | None, ...] = ()) -> Tensor:
    """Run the simulated layers of a stack (first, one middle, last), each checkpointed when asked.
    `saved_with_input`: other tensors a checkpointed layer receives as arguments (position embeddings,
    masks), which torch.utils.checkpoint keeps alive with the layer input."""
    sim = m.sim
    for i in layer_indices(count):
        sim.enter_layer(stack, i, count)
        m.layer = i
        if m.cfg.checkpointing:
            x = checkpointed(m, lambda t, i=i: layer(t, i), x, saved_with_input)
        else:
            x = layer(x, i)
        sim.leave_layer(stack, i, count)
    return x


def checkpointed(m: Model, fn: Callable[[Tensor], Tensor], x: Tensor, extra: tuple[Tensor | None, ...]) -> Tensor:
    """transformers' GradientCheckpointingLayer with torch.utils.checkpoint(use_reentrant=False): the first
    forward keeps no saved tensors, only the layer's arguments; the backward recomputes the layer (stopping
    early, once the last saved tensor is recomputed) and runs its backward."""
    sim = m.sim
    if not sim.grad_enabled:
        return fn(x)
    tag, layer = sim.tag, m.layer
    sim.grad_enabled = False
    before = len(sim.params)
    out = fn(x)
    sim.grad_enabled = True
    trains = any(p.trainable for p in sim.params[before:])
    del sim.params[before:]  # the recompute creates them again
    out.node = sim.node("CheckpointBackward", [x], [x, *extra], _recompute(m, fn, tag, layer), force=trains)
    out.requires_grad = out.node is not None
    return out


def _recompute(m: Model, fn: Callable[[Tensor], Tensor], tag: object, layer: int) -> Callable:
    def backward(sim: Sim, n, g: list) -> list:
        was_tag, was_layer = sim.tag, m.layer
        sim.tag, m.layer = tag, layer
        first_node, first_event = len(sim.nodes), len(sim.events)
        x_shape, x_dtype = n.inputs[0]
        x_storage = n.saved[0] if n.saved else None
        leaf = None
        if n.next[0] is not None:
            leaf = sim.capture(x_shape, x_dtype)
            x = Tensor(x_shape, x_dtype, x_storage, None, 0, True, leaf)
        else:
            x = Tensor(x_shape, x_dtype, x_storage)
        sim.grad_enabled = True
        sim.op = "recompute"
        out = fn(x)
        sim.grad_enabled = False
        del x
        root = (out.node, out.out_index, g[0])
        del out, g
        _early_stop(sim, first_node, first_event)
        nested = sim.nodes[first_node:]
        del sim.nodes[first_node:]
        sim.backward([root], nested)
        del root, nested
        sim.tag, m.layer = was_tag, was_layer
        return [leaf.grad if leaf is not None else None]
    return backward


def _early_stop(sim: Sim, first_node: int, first_event: int) -> None:
    """torch.utils.checkpoint stops recomputing once every saved tensor is back: drop the events after the
    last allocation that a recomputed node saved (the layer's tail, e.g. its output, is not recomputed)."""
    saved = {id(s) for ref in sim.nodes[first_node:] if (n := ref()) is not None for s in n.saved}
    last = first_event
    for k in range(first_event, len(sim.events)):
        if sim.events[k].sid in saved:
            last = k
    del sim.events[last + 1:]


def prompt_inputs(m: Model, embeds: Tensor) -> Tensor:
    """peft PeftModelForCausalLM.forward for prompt tuning / p-tuning: the prompt encoder's output
    (B, virtual, d) in fp32 (`get_prompt`), `.to(inputs_embeds.dtype)`, then cat in front of the token
    embeddings. Labels get -100 for the virtual tokens (`torch.cat((prefix_labels, labels))`)."""
    f, sim = m.f, m.sim
    n, d = m.ad.extra_tokens, m.arch.token_dim
    w = m.added("prompt_encoder.embedding.weight", (n * m.arch.stacks, d))
    sim.op = "prompt"
    prompts = f.embedding(w, sim.leaf(("B", n), "i64"), d)
    if m.method == "ptuning":
        prompts = _ptuning_mlp(m, prompts, d)
    prompts = f.to(prompts, embeds.dtype)
    out = f.cat([prompts, embeds], ("B", "T", d))
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


def causal_lm_loss(m: Model, logits: Tensor, vocab: int) -> Tensor:
    """transformers loss/loss_utils.py ForCausalLMLoss: `logits.float()` (a copy unless fp32), labels padded
    by one (`nn.functional.pad`) and shifted (`[..., 1:].contiguous()`: a copy for batch > 1), then
    cross_entropy = log_softmax (saved) + nll_loss. The caller keeps `logits` alive until the loss exists."""
    f, sim = m.f, m.sim
    lf = f.to(logits, "f32")
    sim.op = "constant_pad_nd"
    shifted = sim.new(("B", "T"), "i64")  # (B, T + 1), sliced; batch > 1 copies (B, T): 8 bytes x B apart
    flat = f.view(lf, ("B", "T", vocab))
    del lf
    logp = f.log_softmax(flat)
    del flat
    return f.nll_loss(logp, shifted)


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
    full = count * 2 * kv_heads * head_dim
    w = m.added("prompt_encoder.embedding.weight", (P, width))
    sim.op = "prefix"
    pe = f.embedding(w, sim.leaf(("B", P), "i64"), width)
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
    cache = m.prefix_caches[m.layer]
    shape = ("B", kv_heads, "K", head_dim)
    cache[0] = f.cat([cache[0], k], shape)
    cache[1] = f.cat([cache[1], v], shape)
    return cache[0], cache[1]
