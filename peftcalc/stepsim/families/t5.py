"""T5 / mT5 as transformers 5 writes them (models/t5/modeling_t5.py): an encoder and a decoder stack of
pre-norm blocks (T5LayerNorm: RMS without mean, the multiply by rsqrt in fp32 for fp32 input), relative
position biases computed once per stack, dropout (0.1 by default) on every residual branch, inside the
feed-forward and on attention probabilities; ReLU (t5) or gated-GELU (t5 v1.1, flan, mT5) feed-forward.

Attention: the position bias is an additive float mask, so sdpa with dropout runs torch's math composite
(`create_position_bias_mask`: the decoder's causal part as a `where` over a (T, T) boolean, which the
`where` saves). The loss is nn.CrossEntropyLoss on the logits in their own dtype (no fp32 upcast).
For prompt tuning peft prepends virtual tokens to both stacks (num_transformer_submodules = 2).
"""

from __future__ import annotations

from peftcalc.stepsim.engine import Tensor
from peftcalc.stepsim.families.common import embedding_output, prefix_cache, prefix_update, run_stack
from peftcalc.stepsim.families.layers import activation, cfg, eager_softmax_attention, sdpa_math
from peftcalc.stepsim.model import Model


def t5_norm(m: Model, x: Tensor, name: str) -> Tensor:
    """T5LayerNorm: x.to(fp32).pow(2).mean(-1) (the cast a copy for low precision), rsqrt, x * rsqrt (in
    the promoted dtype: fp32), .to(weight dtype) for bf16/fp16 weights, weight * x."""
    f, h = m.f, m.arch.hidden_size
    x32 = f.to(x, "fp32")
    var = f.mean_last(f.pow2(x32))
    del x32
    r = f.unary_saves_output(f.add(var), "RsqrtBackward0", "rsqrt")
    del var
    y = f.mul(x, r)
    del r
    if m.dtype != "fp32":
        y = f.to(y, m.dtype)
    return f.mul(m.weight(name + ".weight", (h,)), y)


def relative_bias(m: Model, decoder: bool, n: str, keys: str | None = None) -> Tensor:
    """T5Attention.compute_bias (first layer of each stack): relative positions (n, n) int64, their buckets
    (a few (n, n) temporaries), relative_attention_bias(buckets) (n, n, H), permuted to (1, H, n, n). With
    checkpointing it runs inside the first (checkpointed) block: its buckets are not kept, its output is."""
    f, sim, a = m.f, m.sim, m.arch
    H = a.num_heads
    stack = "decoder" if decoder else "encoder"
    was = sim.grad_enabled
    if m.cfg.checkpointing:
        sim.grad_enabled = False
    k = keys or n
    sim.op = "relative_position"
    rel = sim.new((n, k), "int64")
    tmp = [sim.new((n, k), "int64"), sim.new((n, k), "fp32")]  # abs/min, log of the distance
    del tmp
    buckets = sim.new((n, k), "int64")
    del rel
    w = m.weight(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 (int(cfg(m, "relative_attention_num_buckets", default=32)), H))
    values = f.embedding(w, buckets, H)
    del buckets
    sim.grad_enabled = was
    if m.cfg.checkpointing:
        values = sim.require_grad(values)
    return f.view(values, (1, H, n, k))


def attention(m: Model, x: Tensor, p: str, kv: Tensor | None, bias: Tensor | None, causal: bool, q_len: str,
              k_len: str) -> Tensor:
    """T5Attention.forward: q/k/v projections (views (B, H, T, d_kv)), attention with the position bias as
    mask, o projection. Cross-attention's bias is `torch.zeros((1, H, T, K))` made in the first decoder layer."""
    f, a, sim = m.f, m.arch, m.sim
    H, d = a.num_heads, a.head_dim
    p_drop = float(cfg(m, "dropout_rate", default=0.1))
    src = kv if kv is not None else x
    q = f.view(m.linear(x, p + "q"), ("B", H, q_len, d))
    k = f.view(m.linear(src, p + "k"), ("B", H, k_len, d))
    v = f.view(m.linear(src, p + "v"), ("B", H, k_len, d))
    strided = True
    if m.ad.prefix_tokens and p.startswith("decoder"):  # peft passes an EncoderDecoderCache to the decoder
        strided = False
        if kv is None:  # self-attention: the prefix cache, then cat
            k, v = prefix_update(m, k, v, H, d)
            k_len = "K"
        else:  # cross-attention: the empty cross cache's update copies the encoder keys/values, kept to the end
            k, v = f.cat([k], k.shape), f.cat([v], v.shape)
            m.outer += [k, v]
    mask = bias
    if causal:
        # create_position_bias_mask: where(arange >= arange, bias, min) (saves the boolean), .contiguous()
        sim.op = "causal"
        keys = "K" if m.ad.prefix_tokens else k_len
        tri = sim.new((q_len, keys), "bool")
        mask = f.custom("WhereBackward0", [bias], sim.new((1, H, q_len, keys), bias.dtype), [tri])
        del tri
    if m.cfg.attention == "sdpa":
        o = sdpa_math(m, q, k, v, H, d, p_drop, causal=False, mask=mask, q_len=q_len, k_len=k_len,
                      kv_strided=strided)
    else:
        o = eager_softmax_attention(m, q, k, v, H, d, p_drop, mask, q_len=q_len, k_len=k_len, kv_strided=strided)
    del q, k, v, mask
    o = f.copy(o, ("B", q_len, H, d), "transpose_contiguous")
    return m.linear(f.view(o, ("B", q_len, H * d)), p + "o")


def feed_forward(m: Model, x: Tensor, p: str) -> Tensor:
    """T5DenseActDense (wi, act, dropout, wo) or T5DenseGatedActDense (act(wi_0) * wi_1, dropout, wo)."""
    f = m.f
    p_drop = float(cfg(m, "dropout_rate", default=0.1))
    proj = str(cfg(m, "feed_forward_proj", default="relu"))
    gated = proj.startswith("gated-")
    act_name = proj.split("-")[-1]
    act_name = "gelu_new" if act_name == "gelu" and gated else act_name
    if gated:
        g = activation(m, m.linear(x, p + "DenseReluDense.wi_0"), act_name)
        lin = m.linear(x, p + "DenseReluDense.wi_1")
        h = f.mul(g, lin)
        del g, lin
    else:
        h = activation(m, m.linear(x, p + "DenseReluDense.wi"), act_name)
    h = f.dropout(h, p_drop)
    return m.linear(h, p + "DenseReluDense.wo")  # never quantized: T5's _keep_in_fp32_modules (quant.py)


def block(m: Model, x: Tensor, i: int, stack: str, bias: Tensor, enc: Tensor | None, cross_bias: Tensor | None
          ) -> Tensor:
    f = m.f
    p_drop = float(cfg(m, "dropout_rate", default=0.1))
    pre = f"{stack}.block.{{i}}.layer."
    decoder = stack == "decoder"
    n_q = "S" if decoder else "T"  # the decoder sees the target tokens; prompts lengthen the encoder only
    n = t5_norm(m, x, pre + "0.layer_norm")
    a = attention(m, n, pre + "0.SelfAttention.", None, bias, causal=decoder, q_len=n_q,
                  k_len="K" if decoder and m.ad.prefix_tokens else n_q)
    del n
    a = m.adapter(a, "attn_adapter", f"{stack}.block.{{i}}")
    x = f.add(x, f.dropout(a, p_drop))
    del a
    if decoder:
        n = t5_norm(m, x, pre + "1.layer_norm")
        a = attention(m, n, pre + "1.EncDecAttention.", enc, cross_bias, causal=False, q_len="S", k_len="T")
        del n
        x = f.add(x, f.dropout(a, p_drop))
        del a
    last = "2" if decoder else "1"
    n = t5_norm(m, x, pre + last + ".layer_norm")
    h = feed_forward(m, n, pre + last + ".")
    del n
    h = m.adapter(h, "ffn_adapter", f"{stack}.block.{{i}}")
    return f.add(x, f.dropout(h, p_drop))


def stack(m: Model, name: str, x: Tensor, count: int, enc: Tensor | None) -> Tensor:
    """T5Stack.forward: dropout(inputs_embeds), the blocks (the first computes the position biases, which the
    stack then passes to every block), final_layer_norm, dropout."""
    f, sim = m.f, m.sim
    p_drop = float(cfg(m, "dropout_rate", default=0.1))
    decoder = name == "decoder"
    sim.enter_layer(name, 0, count)
    bias = relative_bias(m, decoder, "S" if decoder else "T", "K" if decoder and m.ad.prefix_tokens else None)
    cross = None
    if decoder:
        sim.op = "zeros"
        cross = sim.new((1, m.arch.num_heads, "S", "T"), m.cfg.compute_dtype)
        if m.cfg.checkpointing:
            cross = sim.require_grad(cross)
    sim.tag = None
    x = f.dropout(x, p_drop)
    x = run_stack(m, name, count, lambda t, i, b, e, c: block(m, t, i, name, b, e, c), x, (bias, enc, cross))
    x = t5_norm(m, x, f"{name}.final_layer_norm")
    return f.dropout(x, p_drop)


def forward(m: Model) -> Tensor:
    """T5ForConditionalGeneration.forward with labels."""
    f, sim, a = m.f, m.sim, m.arch
    h, V = a.hidden_size, a.vocab_size
    enc_layers = a.num_encoder_layers
    dec_layers = a.num_layers - enc_layers
    if m.ad.prefix_tokens:
        prefix_cache(m, "decoder", dec_layers, a.num_heads, a.head_dim)
    shared = m.weight("shared.weight", (V, h))
    x = embedding_output(m, f.embedding(shared, sim.leaf(("B", "S"), "int64"), h))
    prompts = None
    if m.ad.extra_tokens:
        x, prompts = _prompts(m, x)
    enc = stack(m, "encoder", x, enc_layers, None)
    del x
    m.end_model()
    sim.op = "shift_right"
    dec_ids = sim.new(("B", "S"), "int64")  # _shift_right(labels): new_zeros, then copies into it
    y = embedding_output(m, f.embedding(shared, dec_ids, h))
    del dec_ids
    del prompts
    y = stack(m, "decoder", y, dec_layers, enc)
    m.end_model()
    m.outer.append(enc)
    del enc
    if a.tie_embeddings:
        y = f.scale(y)  # sequence_output * model_dim ** -0.5
        logits = f.linear(y, shared, None, V)
    else:
        logits = m.linear(y, "lm_head")
    m.outer.append(y)
    del y
    flat = f.view(logits, ("B", "S", V))
    if f.autocast:  # cross_entropy is an fp32 autocast op: the logits are cast up first
        flat = f.to(flat, "fp32")
    logp = f.log_softmax(flat)  # nn.CrossEntropyLoss on the logits as they are
    m.outer.append(logits)
    del flat, logits
    sim.op = "labels"
    return f.nll_loss(logp, sim.leaf(("B", "S"), "int64"))


def _prompts(m: Model, x: Tensor) -> tuple[Tensor, Tensor]:
    """peft PeftModelForSeq2SeqLM.forward for prompt learning: prompts (B, 2 x virtual, d) from get_prompt, cast
    to the embeddings' dtype; the first `virtual` rows prepended to the encoder's input. Measured (traced, peft
    0.21): the decoder keeps the target length and the labels are not lengthened."""
    from peftcalc.stepsim.families.common import _ptuning_mlp

    f, sim = m.f, m.sim
    n, d = m.ad.extra_tokens, m.arch.token_dim
    w = m.added("prompt_encoder.embedding.weight", (2 * n, d))
    sim.op = "prompt"
    p = f.embedding(w, sim.leaf((1, 2 * n), "int64"), d)
    if m.ad.prompt_encoder == "mlp":
        p = _ptuning_mlp(m, p, d)
    p = f.to(f.expand(p, ("B", 2 * n, d)), x.dtype)
    out = f.cat([f.slice(p, ("B", n, d)), x], ("B", "T", d))
    m.outer.append(out)
    return out, p
