"""The only part of peftcalc that imports torch, transformers and peft."""

import logging

# bitsandbytes warns at import on CPUs with AVX512-bf16 that its optional inference kernel (kernels-community)
# is not installed; it is used for batch inference only (Linear4bit in eval mode), never in a training step.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
