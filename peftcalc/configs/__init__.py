"""Training config files in, peftcalc's inputs out: axolotl, TRL / transformers Trainer, torchtune, LLaMA-Factory
and peft adapter configs, with the DeepSpeed and accelerate files that launch them.

`read_config(path)` detects the kind (or takes `kind`), runs that kind's reader and returns a TrainingConfig: the
settings the file gives (as command-line values) and the fate of every field. `apply.merge` puts settings under
the flags the user gave. Imports pyyaml, never torch.
"""

from __future__ import annotations

from pathlib import Path

from peftcalc.configs.detect import KINDS, TRAINING_KINDS, detect
from peftcalc.configs.load import parse, read_text
from peftcalc.configs.result import FieldUse, Settings, Status, TrainingConfig
from peftcalc.errors import InputError

__all__ = ["KINDS", "TRAINING_KINDS", "FieldUse", "Settings", "Status", "TrainingConfig", "read_config"]


def read_config(path: str | Path, kind: str | None = None) -> TrainingConfig:
    """Read one config file. `kind` (one of KINDS) skips detection."""
    text = read_text(path)
    data = parse(text, path)
    name = str(path)
    if kind is None:
        kind = detect(data, name)
    elif kind not in KINDS:
        raise InputError(f"--from-kind {kind!r} is not a kind peftcalc reads; kinds: {', '.join(KINDS)}")
    if kind == "axolotl":
        from peftcalc.configs.axolotl import read_axolotl

        return read_axolotl(data, name)
    if kind == "trl":
        from peftcalc.configs.trl import read_trl

        return read_trl(data, name)
    if kind == "torchtune":
        from peftcalc.configs.torchtune import read_torchtune

        return read_torchtune(data, name, text)
    if kind == "llamafactory":
        from peftcalc.configs.llamafactory import read_llamafactory

        return read_llamafactory(data, name)
    if kind == "peft":
        from peftcalc.configs.peft import read_peft

        return read_peft(data, name)
    from peftcalc.configs.launchers import read_accelerate, read_deepspeed

    return read_deepspeed(data, name) if kind == "deepspeed" else read_accelerate(data, name)
