"""Setup values a config can ask for that the estimate does not model yet, and what it computes instead.

Their behaviour is other work in progress (kbit preparation and the quantization options: the QLoRA issue; parameter
offload: the cluster issue). Until it lands, a value read from a file is reported as "not modelled" and the
estimate is computed with the fallback, so the setup printed is the one computed. A test checks each entry
still changes nothing; when a behaviour lands that test fails and the entry goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fallback:
    setting: str  # the command-line keyword (Settings field)
    values: tuple[Any, ...] | None  # the values not modelled (None: any value)
    instead: Any  # what the estimate computes with (None: the command's default)
    why: str


FALLBACKS: tuple[Fallback, ...] = (
    Fallback("offload_params", (True,), False, "parameters counted on the GPU (optimizer offload only)"),
)


def fallback(setting: str, value: Any) -> Fallback | None:
    """The fallback for `setting` = `value`, when the estimate does not model that value."""
    for f in FALLBACKS:
        if f.setting == setting and (f.values is None or value in f.values):
            return f
    return None
