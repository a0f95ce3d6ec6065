"""The replay's results on disk, so that a model and method replayed once are not replayed again by the next
command (the replay takes 5-50 ms per method; reading its result back, a fraction of one).

One small file per (model inventory and config, adaptation, step configuration, replay code), in
`<user cache>/peftcalc/replay-py<version>/`, written with `marshal` (polynomials are dicts of tuples and ints; the
module is built into Python, so reading costs no import) and atomically. The key includes a stamp of the replay's
source files (their sizes and modification times), so a changed replay never reads an old result; a file that
cannot be read, or that holds another key, is ignored and rewritten.
"""

from __future__ import annotations

import marshal
import os
import sys
import zlib
from dataclasses import astuple, fields

from peftcalc.methods.base import Adaptation
from peftcalc.stepsim.result import Moment, SimResult, StepConfig, Where
from peftcalc.usercache import cache_root

_HERE = os.path.dirname(os.path.abspath(__file__))
_stamp: str | None = None


def source_stamp() -> str:
    """Sizes and modification times of the replay's source files."""
    global _stamp
    if _stamp is None:
        parts = []
        for folder in (_HERE, os.path.join(_HERE, "families")):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(folder, name))
                    parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        _stamp = ",".join(parts)
    return _stamp


def replay_key(adaptation: Adaptation, cfg: StepConfig) -> str:
    """Everything the replay reads: the inventory and config of the model, the adaptation, the step, the code."""
    spec = adaptation.spec
    # every field of the adaptation but the spec (whose parts the replay reads are listed): a field added later
    # (lora_dropout, quantization) cannot be left out of the key
    method = tuple((f.name, getattr(adaptation, f.name)) for f in fields(adaptation) if f.name != "spec")
    return repr((source_stamp(), spec.arch, spec.linears, spec.others, sorted(spec.hf_config.items()), method, cfg))


def _path(key: str) -> str:
    data = key.encode("utf-8")
    name = f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}.marshal"
    return os.path.join(cache_root(), f"replay-py{sys.version_info[0]}{sys.version_info[1]}", name)


def load(key: str) -> SimResult | None:
    try:
        with open(_path(key), "rb") as f:
            stored, after, forward, backward, grads, moments, counts = marshal.load(f)
        if stored != key:
            return None
        return SimResult(after, forward, backward, grads, tuple(Moment(Where(*w), live) for w, live in moments),
                         counts)
    except (OSError, EOFError, ValueError, TypeError):
        return None


def store(key: str, r: SimResult) -> None:
    from peftcalc.atomic import write_bytes_atomic
    from peftcalc.errors import PeftcalcError

    try:
        write_bytes_atomic(_path(key), marshal.dumps((key, r.after_forward, r.forward_peaks, r.backward_peaks,
                                                     r.gradients, tuple((astuple(m.where), m.live)
                                                                        for m in r.moments), r.stack_counts)))
    except (PeftcalcError, ValueError):
        pass  # an unwritable cache costs the next command a replay, nothing else
