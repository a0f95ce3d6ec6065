"""Small configs of the families the measured backend must handle (2 layers, hidden 64, vocab 256)."""

from __future__ import annotations

from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec

TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                  tie_word_embeddings=False),
    "t5": dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
               vocab_size=256, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
    "mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=256, num_local_experts=4,
                    num_experts_per_tok=2, max_position_embeddings=512),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=512),
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=256,
                  max_position_embeddings=512),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                  tie_word_embeddings=True),
}


def tiny(family: str = "llama") -> ModelSpec:
    return spec_from_config(TINY_CONFIGS[family], f"tiny-{family}", "tests/measure/conftest.py")
