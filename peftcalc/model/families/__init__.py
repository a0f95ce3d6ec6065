"""One builder per Hugging Face `model_type`: config dict -> ModelSpec, with transformers' defaults.

Each builder reads a `config.json` as transformers would (its defaults for missing keys) and lists every
parameter the real implementation creates. Tests build the real model on the meta device and compare.
"""

from __future__ import annotations

# Imported for their registration side effect.
from peftcalc.model.families import bert, bloom, falcon, gpt2, gpt_neox, llama, opt, t5  # noqa: F401
from peftcalc.model.families.registry import FAMILIES, Builder, register  # noqa: F401
