"""The evaluation by generation some published runs do between training steps, and whether it could set the
run's peak. peft's MetaMathQA script (method_comparison/MetaMathQA/run.py) calls `model.generate` every 250
steps on 50 GSM8K questions (`batch_size_eval=50`, `max_length=800`) under `torch.inference_mode()`, and its
`accelerator_memory_max` spans the whole run. What generation holds:

- the model states kept across the evaluation: weights, buffers, optimizer states, and the gradients of the last
  step (run.py calls `optimizer.zero_grad()` at the start of the next training step, not before evaluating);
- transformers' DynamicCache: keys and values of every layer for the whole batch, up to `max_length` tokens, in
  the compute dtype; each decoding step's `torch.cat` makes a layer's new key and value before it frees the old;
- the logits of one position per sequence in fp32 (`generate` keeps the last position only).

Prefill activations (the questions are short) are left out: a bound, stated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftcalc.evidence.mapping import Mapped
from peftcalc.evidence.record import PublishedRecord
from peftcalc.precision import get_precision
from peftcalc.units import dtype_bytes

EVAL = re.compile(r"batch_size_eval=(\d+).*?\"max_length\": (\d+)", re.S)


@dataclass(frozen=True)
class Generation:
    batch: int
    max_length: int
    held_bytes: int  # model states and gradients kept through the evaluation
    cache_bytes: int  # the key/value cache at max_length, plus one layer's cat
    logits_bytes: int

    @property
    def total(self) -> int:
        return self.held_bytes + self.cache_bytes + self.logits_bytes


def evaluation_of(r: PublishedRecord) -> tuple[int, int] | None:
    """(batch, max_length) of the record's evaluation by generation, when its notes state one."""
    m = EVAL.search(r.notes)
    return (int(m.group(1)), int(m.group(2))) if m else None


def generation_bytes(m: Mapped, batch: int, max_length: int) -> Generation:
    from peftcalc.estimate import estimate_method

    mem = estimate_method(m.spec, m.method, m.setup, overhead=m.overhead).memory
    a = m.spec.arch
    dt = dtype_bytes(get_precision(m.setup.precision).compute_dtype)
    tokens = max_length + m.method.adapt(m.spec).extra_tokens + m.method.adapt(m.spec).prefix_tokens
    layer = 2 * batch * a.num_kv_heads * tokens * a.head_dim * dt
    held = mem.start_bytes - mem.input_bytes + mem.gradient_bytes
    return Generation(batch, max_length, held, layer * a.num_layers + layer, batch * a.vocab_size * 4)
