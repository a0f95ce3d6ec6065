"""Llama-style decoders, as transformers 5 writes them: models/llama/modeling_llama.py (and mistral, qwen2,
gemma, gemma2, phi3, mixtral, which differ where noted).

A decoder layer: RMSNorm -> attention (q/k/v projections, rotary embedding, sdpa or eager) -> o_proj ->
residual add -> RMSNorm -> gated MLP act(gate) * up -> down_proj -> residual add.
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import (embedding_output, head_loss, prefix_cache, prefix_update,
                                              prompt_inputs, run_stack)
from peftcalc.stepsim.families.layers import gpu_attention, sdpa_flash_masked
from peftcalc.stepsim.model import Model

ACT = {"llama": "silu", "mistral": "silu", "qwen2": "silu", "mixtral": "silu", "phi3": "silu",
       "gemma": "gelu_tanh", "gemma2": "gelu_tanh"}


def rms_norm(m: Model, x: Tensor, weight: str) -> Tensor:
    """LlamaRMSNorm.forward: x.to(fp32) (a copy for bf16 input); pow(2) (saves x32); mean(-1); + eps;
    rsqrt (saves its result); x32 * rsqrt (saves both); .to(input dtype) (a copy for bf16);
    weight * that (saves it when the weight trains). Gemma: (1 + weight) and the multiply in fp32 first."""
    f, h = m.f, m.arch.hidden_size
    dtype = x.dtype
    x32 = f.to(x, "fp32")
    var = f.mean_last(f.pow(x32))
    r = f.rsqrt(f.add(var))
    if m.arch.family in ("gemma", "gemma2"):
        del var  # GemmaRMSNorm._norm computes it inside one expression; Llama's is a local until the return
    y = f.mul(x32, r)
    del x32, r
    w = m.weight(weight, (h,))
    if m.arch.family in ("gemma", "gemma2"):
        # GemmaRMSNorm: output = self._norm(x.float()) * (1.0 + self.weight.float()); output.type_as(x)
        w1 = f.add(f.to(w, "fp32"))
        out = f.mul(y, w1)
        del y, w1
        return f.to(out, dtype)
    y = f.to(y, dtype)
    return f.mul(w, y)


def rotary(m: Model, x: Tensor) -> tuple[Tensor, Tensor]:
    """LlamaRotaryEmbedding.forward: position_ids[..., None].float() * inv_freq (1, T, d/2), cat((freqs,
    freqs)), cos()/sin() * attention_scaling, .to(x.dtype): cos and sin (1, T, head_dim), shared by layers."""
    f, sim, d = m.f, m.sim, m.arch.head_dim
    sim.op = "rotary"
    pos = sim.new((1, "T"), "int64")  # position_ids = arange(T).unsqueeze(0)
    pf = sim.new((1, "T", 1), "fp32")
    freqs = sim.new((1, "T", d // 2), "fp32")
    del pf
    emb = sim.new((1, "T", d), "fp32")
    del freqs
    c = sim.new((1, "T", d), "fp32")
    cos = sim.new((1, "T", d), "fp32")
    del c
    s = sim.new((1, "T", d), "fp32")
    sin = sim.new((1, "T", d), "fp32")
    del s, emb
    cos, sin = f.to(cos, x.dtype), f.to(sin, x.dtype)
    m.keep.append(pos)
    m.layer_args = (cos, sin, pos)  # what each (checkpointed) layer receives
    return cos, sin


def rotate(m: Model, t: Tensor, cos: Tensor, sin: Tensor, heads: int) -> Tensor:
    """(t * cos) + (rotate_half(t) * sin); rotate_half = cat((-x2, x1)) of the two halves (slice views)."""
    f, d = m.f, m.arch.head_dim
    shape = ("B", heads, "T", d)
    half = ("B", heads, "T", d // 2)
    a = f.mul(t, cos)
    x1, x2 = f.slice(t, half), f.slice(t, half)
    n2 = f.neg(x2)
    rot = f.cat([n2, x1], shape)
    del n2, x1, x2
    b = f.mul(rot, sin)
    del rot
    out = f.add(a, b)
    return out


def attention(m: Model, x: Tensor, cos: Tensor, sin: Tensor, prefix: str, mask: Tensor | None = None) -> Tensor:
    a, f = m.arch, m.f
    H, KV, d = a.num_heads, a.num_kv_heads, a.head_dim
    p = prefix + "self_attn."
    if a.family == "phi3":
        # Phi3Attention: qkv = qkv_proj(x); q, k, v are slices (views) of it
        qkv = m.linear(x, p + "qkv_proj")
        q = f.slice(qkv, ("B", H, "T", d))
        k = f.slice(qkv, ("B", KV, "T", d))
        v = f.slice(qkv, ("B", KV, "T", d))
        del qkv
    else:
        q = f.view(m.linear(x, p + "q_proj"), ("B", H, "T", d))
        k = f.view(m.linear(x, p + "k_proj"), ("B", KV, "T", d))
        v = f.view(m.linear(x, p + "v_proj"), ("B", KV, "T", d))
    q = rotate(m, q, cos, sin, H)
    k = rotate(m, k, cos, sin, KV)
    if a.family == "phi3":  # Phi3 apply_rotary_pos_emb: cat([rotated part, pass-through part]): new tensors
        q = f.cat([q], ("B", H, "T", d))
        k = f.cat([k], ("B", KV, "T", d))
    if m.ad.prefix_tokens:
        k, v = prefix_update(m, k, v, KV, d)
    head_major = a.family == "phi3"  # q contiguous per head (a cat), not a head-major view of token-major data
    o = attend(m, q, k, v, H, KV, d, mask=mask)
    del q, k, v
    if head_major and m.cfg.attention == "sdpa":
        # the CPU flash kernel's output follows the query's layout: transpose(1, 2).contiguous() copies
        o = f.copy(o, ("B", "T", H, d), "transpose_contiguous")
    return m.linear(f.view(o, ("B", "T", H * d)), p + "o_proj")


def attend(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, causal: bool = True,
           dropout: float = 0.0, mask: Tensor | None = None) -> Tensor:
    """transformers integrations/sdpa_attention.py (grouped-query heads passed with enable_gqa),
    flash_attention.py, flex_attention.py or eager_attention_forward."""
    f = m.f
    keys = "K" if m.ad.prefix_tokens else "T"
    if m.cfg.attention == "flash_attention_2":
        return flash_attention_2(m, q, k, v, H, KV, d, keys)
    if m.cfg.attention == "flex_attention":  # a BlockMask (small int32 tensors), enable_gqa=True
        return gpu_attention(m, q, k, v, H, KV, d, "flex", k_len=keys)
    if m.cfg.attention == "sdpa" and m.cfg.device == "cuda":
        return sdpa_cuda(m, q, k, v, H, KV, d, keys, mask)
    if m.cfg.attention == "sdpa" and dropout == 0.0:
        if mask is None:
            return f.sdpa_flash_cpu(q, k, v, ("B", H, "T", d), ("B", H, "T"))
        # with a mask transformers does not pass enable_gqa (use_gqa_in_sdpa): repeat_kv copies; sdpa turns a
        # boolean mask into a float one (convert_boolean_attn_mask: logical_not, where), which the kernel saves
        if H != KV:  # expand + reshape: a view when there is one key/value head, else a copy
            k, v = repeat_kv(m, k, KV, H, keys, d), repeat_kv(m, v, KV, H, keys, d)
        return sdpa_flash_masked(m, q, k, v, ("B", H, "T", d), ("B", H, "T"), mask)
    return eager(m, q, k, v, H, KV, d, keys, dropout, mask)


def sdpa_cuda(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, keys: str,
              mask: Tensor | None) -> Tensor:
    """sdpa on CUDA (torch's sdp_utils picks the kernel): without a mask, bf16/fp16 inputs and head_dim <= 256,
    the flash kernel, grouped heads passed with enable_gqa (transformers use_gqa_in_sdpa); with a mask
    (padded or packed rows, prefix keys) transformers repeats the key/value heads (repeat_kv copies), torch turns
    the boolean mask into a float one per call (convert_boolean_attn_mask: logical_not, where) and the
    memory-efficient kernel keeps it as its bias; fp32 inputs take the memory-efficient kernel too."""
    dtype = m.cfg.compute_dtype
    if mask is None and dtype != "fp32" and d <= 256:
        return gpu_attention(m, q, k, v, H, KV, d, "flash", k_len=keys)
    sim = m.sim
    if H != KV:
        k, v = repeat_kv(m, k, KV, H, keys, d), repeat_kv(m, v, KV, H, keys, d)
    fmask = None
    if mask is not None:
        sim.op = "logical_not"
        inv = sim.new(mask.shape, "bool")
        sim.op = "where"
        fmask = sim.new(mask.shape, dtype)
        del inv
    return gpu_attention(m, q, k, v, H, H, d, "efficient", fmask, k_len=keys)


def flash_attention_2(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, keys: str) -> Tensor:
    """transformers modeling_flash_attention_utils._flash_attention_forward: grouped heads natively; packed rows
    (position ids) go to flash_attn_varlen_func as views; padded rows are unpadded first (`_upad_input`:
    index_first_axis copies q, k and v, the kernel keeps the copies) and the output padded back (`pad_input`:
    a new (B, T, H, d) tensor)."""
    f = m.f
    if m.cfg.mask != "padded":
        return gpu_attention(m, q, k, v, H, KV, d, "flash", k_len=keys)
    q = f.copy(q, op="index_first_axis")
    k, v = f.copy(k, op="index_first_axis"), f.copy(v, op="index_first_axis")
    o = gpu_attention(m, q, k, v, H, KV, d, "flash", k_len=keys)
    del q, k, v
    return f.copy(o, op="pad_input")


def eager(m: Model, q: Tensor, k: Tensor, v: Tensor, H: int, KV: int, d: int, keys: str, dropout: float,
          mask: Tensor | None) -> Tensor:
    """eager_attention_forward: repeat_kv (expand + reshape: a copy for grouped heads), matmul(q, k^T)
    (ATen's matmul views the operands as (B*H, ., .): a copy when B > 1 for q and k as the rotary left them
    (head-major views of a token-major layout) and for v as a transposed view; contiguous caches and
    repeat_kv copies need none), * scaling, + mask, softmax(dtype=fp32) (a copy first for bf16),
    .to(q.dtype), dropout, matmul with v, transpose(1, 2).contiguous() (a copy)."""
    f = m.f
    groups = H // KV
    copies = not m.cfg.batch1
    cached = bool(m.ad.prefix_tokens)  # keys/values come out of the cache's cat: contiguous
    if groups > 1:
        k, v = repeat_kv(m, k, KV, H, keys, d), repeat_kv(m, v, KV, H, keys, d)
        if KV == 1 and copies:  # expanded views: ATen's matmul copies them for B > 1
            k = f.copy(k, op="matmul_reshape")
    elif copies and not cached:
        k = f.copy(k, op="matmul_reshape")
    qc = f.copy(q, op="matmul_reshape") if copies else q
    scores = f.matmul(qc, k, ("B", H, "T", keys))
    del qc, k
    scores = f.scale(scores)
    if m.arch.family == "gemma2":  # attention logit soft-capping: / cap, tanh (saves its result), * cap
        scores = f.scale(scores, "div")
        scores = f.unary_saves_output(scores, "TanhBackward0", "tanh")
        scores = f.scale(scores)
    if mask is not None:
        scores = f.add(scores, mask)
    probs = f.softmax(scores, "fp32")
    del scores
    probs = f.to(probs, q.dtype)
    probs = f.dropout(probs, dropout)
    vc = f.copy(v, op="matmul_reshape") if copies and (KV == 1 or groups == 1 and not cached) else v
    out = f.matmul(probs, vc, ("B", H, "T", d))
    del probs, vc
    return f.copy(out, ("B", "T", H, d), "transpose_contiguous")


def moe(m: Model, x: Tensor, prefix: str) -> Tensor:
    """MixtralSparseMoeBlock with transformers' grouped_mm experts (integrations/moe.py
    grouped_mm_experts_forward). Routing assumption: none needed — every token's top-k (token, expert) pairs
    go through one grouped GEMM of N*k rows (N = B*T tokens), so the bytes do not depend on which experts the
    tokens choose. Router: linear (N, E), .float(), softmax (saved), topk (indices saved), in-place
    renormalisation (autograd keeps a clone and the sum). Experts: sort, gather x[perm // k] (N*k, h),
    grouped_mm gate_up (N*k, 2f), act(gate) * up, grouped_mm down (N*k, h), * routing weights (fp32),
    un-permute (a gather), view (N, k, h).sum(1), .to(dtype)."""
    f, a, sim = m.f, m.arch, m.sim
    p = prefix + "mlp."
    h, E, k, ff = a.hidden_size, a.num_experts, a.experts_per_token, a.ffn_size
    N, Nk = ("B", "T"), ("B", "T", k)
    flat = f.view(x, N + (h,))
    logits = f.linear(flat, m.wrapped_param(p + "gate.weight", m.weight(p + "gate.weight", (E, h))), None, E)
    probs = f.softmax(logits, "fp32")
    del logits
    sim.op = "topk"
    values = sim.new(N + (k,), "fp32")
    indices = sim.new(N + (k,), "int64")
    values = f.custom("TopkBackward0", [probs], values, [indices])
    del probs
    total = f.custom("SumBackward1", [values], sim.new(N + (1,), "fp32"), [])
    values = f.custom("DivBackward0", [values, total], sim.new(N + (k,), "fp32"), [total, values])  # clone
    del total
    sim.op = "sort"
    sorted_ids = sim.new(Nk, "int64")
    perm = sim.new(Nk, "int64")
    sim.op = "floor_divide"
    token_of = sim.new(Nk, "int64")
    sel = f.custom("IndexBackward0", [flat], sim.new(Nk + (h,), flat.dtype), [token_of])
    del token_of
    weights_g = f.custom("IndexBackward0", [values], sim.new(Nk, "fp32"), [perm])
    del values
    sim.op = "histc"
    hist_in = sim.new(Nk, "fp32")
    counts = sim.new((E,), "fp32")
    del hist_in
    offsets = sim.new((E,), "int32")
    del counts
    w1 = m.wrapped_param(p + "experts.gate_up_proj", m.weight(p + "experts.gate_up_proj", (E, 2 * ff, h)))
    gu = f.linear(sel, w1, None, 2 * ff, op="_grouped_mm")
    del sel
    gate, up = f.slice(gu, Nk + (ff,)), f.slice(gu, Nk + (ff,))
    del gu
    act = f.unary_saves_input(gate, "SiluBackward0", "silu")
    del gate
    hid = f.mul(act, up)
    del act, up
    w2 = m.wrapped_param(p + "experts.down_proj", m.weight(p + "experts.down_proj", (E, h, ff)))
    out = f.linear(hid, w2, None, h, op="_grouped_mm")
    del hid
    weighted = f.mul(out, f.view(weights_g, Nk + (1,)))
    del out, weights_g
    sim.op = "empty_like"
    inv = sim.new(Nk, "int64")
    sim.op = "arange"
    ar = sim.new(Nk, "int64")
    del ar, sorted_ids, perm, offsets
    unperm = f.custom("IndexBackward0", [weighted], sim.new(Nk + (h,), "fp32"), [inv])
    del weighted, inv
    summed = f.custom("SumBackward1", [f.view(unperm, ("B", "T", k, h))], sim.new(N + (h,), "fp32"), [])
    del unperm
    return f.view(f.to(summed, flat.dtype), ("B", "T", h))


def repeat_kv(m: Model, t: Tensor, KV: int, H: int, keys: str, d: int) -> Tensor:
    """transformers repeat_kv: t[:, :, None].expand(B, KV, H // KV, keys, d).reshape(B, H, keys, d) — a copy,
    except with a single key/value head, where the reshape can view the expanded tensor."""
    f = m.f
    e = f.expand(t, ("B", KV, H // KV, keys, d))
    return f.view(e, ("B", H, keys, d)) if KV == 1 else f.copy(e, ("B", H, keys, d), "repeat_kv")


def mlp(m: Model, x: Tensor, prefix: str) -> Tensor:
    """LlamaMLP: down_proj(act(gate_proj(x)) * up_proj(x)); Phi3: gate_up_proj then chunk (views)."""
    f, a = m.f, m.arch
    if a.num_experts:
        return moe(m, x, prefix)
    p = prefix + "mlp."
    if a.family == "phi3":
        gu = m.linear(x, p + "gate_up_proj")
        gate, up = f.slice(gu, ("B", "T", a.ffn_size)), f.slice(gu, ("B", "T", a.ffn_size))
        del gu
    else:
        gate = m.linear(x, p + "gate_proj")
        up = m.linear(x, p + "up_proj")
    if ACT[a.family] == "silu":
        act = f.unary_saves_input(gate, "SiluBackward0", "silu")
    else:
        act = f.unary_saves_input(gate, "GeluBackward0", "gelu")
    del gate
    h = f.mul(act, up)
    del act, up
    return m.linear(h, p + "down_proj")


def layer(m: Model, x: Tensor, i: int, cos: Tensor, sin: Tensor, mask: Tensor | None = None) -> Tensor:
    """LlamaDecoderLayer.forward (Gemma2 adds post-attention and pre/post-feedforward norms)."""
    prefix = "model.layers.{i}."
    a = m.arch
    residual = x
    h = rms_norm(m, x, prefix + "input_layernorm.weight")
    del x
    h = attention(m, h, cos, sin, prefix, mask)
    h = m.adapter(h, "attn_adapter", prefix[:-1])
    if a.family == "gemma2":
        h = rms_norm(m, h, prefix + "post_attention_layernorm.weight")
    x = m.f.add(residual, h)
    del residual, h
    residual = x
    h = rms_norm(m, x, prefix + ("pre_feedforward_layernorm.weight" if a.family == "gemma2"
                                else "post_attention_layernorm.weight"))
    del x
    h = mlp(m, h, prefix)
    h = m.adapter(h, "ffn_adapter", prefix[:-1])
    if a.family == "gemma2":
        h = rms_norm(m, h, prefix + "post_feedforward_layernorm.weight")
    return m.f.add(residual, h)


def forward(m: Model) -> Tensor:
    """LlamaForCausalLM.forward with labels: the loss."""
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    ids = sim.leaf(("B", "S"), "int64")
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", a.num_layers, a.num_kv_heads, a.head_dim)
    emb_w = m.weight("model.embed_tokens.weight", (V, h))
    x = f.embedding(emb_w, ids, h)
    if a.family in ("gemma", "gemma2"):
        # GemmaTextScaledWordEmbedding: the module's output is already * embed_scale (sqrt(hidden_size))
        x = f.scale(x)
    x = embedding_output(m, x)
    if m.ad.extra_tokens:
        x = prompt_inputs(m, x)
    m.mask = causal_mask(m) if needs_mask(m) else None
    cos, sin = rotary(m, x)
    # Gemma2 alternates sliding-window and full attention: transformers builds both masks (a dict the layers
    # pick from), and checkpointed layers keep theirs.
    mask2 = causal_mask(m) if a.family == "gemma2" and m.mask is not None else None
    x = run_stack(m, "decoder", a.num_layers, lambda t, i, c, s, p, k, k2: layer(m, t, i, c, s, k), x,
                  m.layer_args + (m.mask, mask2))
    del mask2
    x = rms_norm(m, x, "model.norm.weight")
    m.end_model()  # LlamaModel.forward returns: its locals (mask, position ids) go
    if a.tie_embeddings:
        tied = m.tied_head("model.embed_tokens.weight", emb_w, (V, h))
        head, weight = (lambda t: f.linear(t, tied, None, V)), (lambda: tied)
    else:
        head, weight = (lambda t: m.linear(t, "lm_head")), (lambda: m.weight("lm_head.weight", (V, h)))
    return head_loss(m, x, head, weight, V, softcap if a.family == "gemma2" else None)


def needs_mask(m: Model) -> bool:
    """masking_utils.create_causal_mask builds a 4-D mask for eager attention always, and for sdpa when the keys
    outrun the queries (prefix tuning) or rows are padded or packed (position ids restart: a block-diagonal
    mask); flash_attention_2 takes the 2-D mask or position ids, flex a BlockMask."""
    if m.cfg.attention == "eager":
        return True
    if m.cfg.attention != "sdpa":
        return False
    return bool(m.ad.prefix_tokens) or m.cfg.mask != "none"


def causal_mask(m: Model) -> Tensor:
    """masking_utils.create_causal_mask: eager attention always gets a float (B, 1, T, K) mask in the model
    dtype; sdpa a boolean one only when the key/value cache is longer than the input (prefix tuning), else
    none (the causal kernel). It lives until the base model's forward returns."""
    m.sim.op = "causal_mask"
    mask = m.sim.new(("B", 1, "T", "K"), "bool" if m.cfg.attention == "sdpa" else m.cfg.compute_dtype)
    m.keep.append(mask)
    return mask


def softcap(m: Model, x: Tensor) -> Tensor:
    """Gemma2's final logit soft-capping: logits / cap, tanh, * cap."""
    f = m.f
    y = f.scale(x, "div")
    y = f.unary_saves_output(y, "TanhBackward0", "tanh")
    return f.scale(y)
