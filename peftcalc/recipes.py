"""What each recipe option of a Setup changes in memory, in words, for the assumptions an estimate prints.
The bytes themselves come from the replay (peftcalc/stepsim: families/layers.py for the attention kernels,
families/common.py for the loss and checkpointing) and memory.py (optimizer state dtype); this module says
which mechanism each option selects and where it is from.

    >>> recipe_lines(Setup(attention="flash_attention_2", loss="fused"))["loss"]   # doctest: +ELLIPSIS
    "fused, Liger's fused linear cross-entropy ..."
"""

from __future__ import annotations

from peftcalc.setup import Setup

ATTENTION = {
    "sdpa": "on CUDA the flash kernel without a mask (keeps q, k, v, the output and a fp32 logsumexp; no "
            "(T, T) matrix), the memory-efficient kernel with a padding/packing mask or fp32 inputs (also keeps the "
            "float mask, and transformers repeats grouped key/value heads); backward scratch: fp32 dq accumulator "
            "and softmax_d (flash_api.cpp mha_bwd)",
    "flash_attention_2": "flash-attn 2: keeps q, k, v, the output and a fp32 "
                         "logsumexp, grouped heads natively; padded rows are unpadded first (copies of q, k, v), "
                         "packed rows use position ids (varlen, no copies)",
    "flex_attention": "keeps q, k, v, the output and a fp32 logsumexp plus the block mask's small "
                      "index tensors; backward dq, dk, dv and a fp32 delta",
    "eager": "materialises the (B, H, T, T) scores, fp32 softmax (kept for backward) and a float "
             "(B, 1, T, T) mask",
}
LOSS = {
    "standard": "standard, the whole (B, T, V) logits, their fp32 copy and fp32 log-softmax (transformers "
                "ForCausalLMLoss)",
    "chunked": "chunked, the head applied to 8 chunks of the sequence and cross-entropy per chunk, one fp32 chunk "
               "at a time, each chunk's fp32 log-softmax kept (torchtune CEWithChunkedOutputLoss)",
    "fused": "fused, Liger's fused linear cross-entropy: no logits tensor; the input gradient (B*T, h) computed in "
             "forward and kept, one (C, V) chunk of logits at a time, C about B*T*h/V rows "
             "(liger_kernel/ops/fused_linear_cross_entropy.py)",
}


def _rows(s: Setup) -> str:
    if s.packing:
        return ("packed: several sequences per row, no padding; position ids restart per sequence (flash varlen, "
                "flex block mask; sdpa and eager get a block-diagonal mask)")
    if s.padded and s.batch_size > 1:
        return ("padded to the longest row of the batch: transformers passes an attention mask (sdpa: memory-"
                "efficient kernel with a float mask per layer; flash_attention_2: unpad and pad copies)")
    return "full rows, no padding mask (every row as long as --seq, or a batch of one)"


def _checkpointing(s: Setup) -> str:
    if not s.gradient_checkpointing:
        return "off: every layer keeps what its backward needs"
    if s.reentrant_checkpointing:
        return ("on, use_reentrant=True: each layer keeps its inputs; backward recomputes the whole layer and holds "
                "the recomputed output while its backward runs (torch.utils.checkpoint CheckpointFunction)")
    return ("on, use_reentrant=False (transformers 5's default): each layer keeps its inputs; the recompute stops "
            "once the last saved tensor is back")


def recipe_lines(s: Setup) -> dict[str, str]:
    """One line per recipe option of the setup, saying what it keeps."""
    states = ("the parameter's dtype (torch's AdamW)" if s.optimizer_state_dtype is None
              else f"{s.optimizer_state_dtype} for every state")
    return {
        "attention kernel": f"{s.attention}: {ATTENTION[s.attention]}",
        "loss": LOSS[s.loss],
        "rows": _rows(s),
        "gradient checkpointing": _checkpointing(s),
        "optimizer state dtype": states,
    }
