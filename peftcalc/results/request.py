"""What a measured run was asked to do: the model, the method and its options, the setup, the backend.

A bench suite's run is written as flat keys (`model`, `method`, `precision`, `batch`, `seq`, `rank` ...,
see `RUN_KEYS`); a result line keeps them under "run". `RunRequest` is the typed form both sides use:
the suite builds it to execute a run, the validation and the reports rebuild it to predict the run again.

    >>> r = RunRequest.from_keys({"model": "gpt2", "method": "lora", "seq": 128})
    >>> r.setup.seq_len, r.options.rank, r.label
    (128, 8, 'gpt2 lora bf16 b1xs128 foreach')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from peftcalc.errors import PeftcalcError
from peftcalc.methods import MethodOptions
from peftcalc.methods.targets import parse_targets
from peftcalc.setup import Setup

# A suite's defaults for every key but the model and the method.
DEFAULTS: dict[str, Any] = {
    "backend": "trace", "precision": "bf16", "batch": 1, "seq": 512, "gradient_checkpointing": False,
    "attention": "sdpa", "adamw_impl": "foreach", "nproc": 1, "zero": 0, "rank": 8, "targets": None,
    "virtual_tokens": 20, "bottleneck": 64, "adapter_variant": "houlsby", "prefix_projection": False,
    "quant_bits": 4, "save_checkpoint": True, "timed_steps": 2,
}
# Setup fields a run may also set under their own names (written to "run" only when not the default, so the
# keys of runs recorded before a field existed stay the same).
SETUP_KEYS = tuple(f.name for f in fields(Setup)
                   if f.name not in ("precision", "batch_size", "seq_len", "gradient_checkpointing", "attention",
                                     "adamw_impl", "zero_stage", "num_gpus"))
SETUP_DEFAULTS = {f.name: f.default for f in fields(Setup)}
# Method options added later, written only when not the default (older runs keep their keys).
OPTION_DEFAULTS: dict[str, Any] = {"quant_type": "nf4", "double_quant": True, "quant_storage": "uint8"}
RUN_KEYS = ("model", "config", "method", *DEFAULTS, *OPTION_DEFAULTS, *SETUP_KEYS)
NOT_IN_KEY = ("save_checkpoint", "timed_steps")  # how a run is executed, not what it measures
BACKENDS = ("trace", "run")


@dataclass(frozen=True)
class RunRequest:
    """One run: exactly one of `model` (a catalogue name) or `config` (a config.json path)."""

    method: str
    options: MethodOptions
    setup: Setup
    model: str | None = None
    config: str | None = None
    backend: str = "trace"
    nproc: int = 1
    save_checkpoint: bool = True
    timed_steps: int = 2

    @classmethod
    def from_keys(cls, keys: Mapping[str, Any]) -> "RunRequest":
        """From a suite's run keys (missing ones take the suite defaults)."""
        unknown = sorted(set(keys) - set(RUN_KEYS))
        if unknown:
            raise PeftcalcError(f"unknown run key(s) {', '.join(unknown)}; known: {', '.join(RUN_KEYS)}")
        p = {**DEFAULTS, **OPTION_DEFAULTS, **keys}
        if not p.get("method"):
            raise PeftcalcError("a run needs a method")
        targets = p["targets"]
        options = MethodOptions(rank=int(p["rank"]),
                                targets=tuple(targets) if isinstance(targets, list) else parse_targets(targets),
                                virtual_tokens=int(p["virtual_tokens"]), bottleneck=int(p["bottleneck"]),
                                adapter_variant=str(p["adapter_variant"]),
                                prefix_projection=bool(p["prefix_projection"]), quant_bits=int(p["quant_bits"]),
                                quant_type=str(p["quant_type"]), double_quant=bool(p["double_quant"]),
                                quant_storage=str(p["quant_storage"]))
        nproc = int(p["nproc"] or 1)
        setup = Setup(precision=p["precision"], batch_size=int(p["batch"]), seq_len=int(p["seq"]),
                      gradient_checkpointing=bool(p["gradient_checkpointing"]), attention=p["attention"],
                      adamw_impl=p["adamw_impl"], zero_stage=int(p["zero"]), num_gpus=nproc,
                      **{k: p[k] for k in SETUP_KEYS if k in p})
        return cls(str(p["method"]), options, setup, p.get("model"), p.get("config"), str(p["backend"]), nproc,
                   bool(p["save_checkpoint"]), int(p["timed_steps"]))

    def keys(self) -> dict[str, Any]:
        """The suite's run keys (what a result line keeps under "run"), sorted."""
        o, s = self.options, self.setup
        out: dict[str, Any] = {
            "backend": self.backend, "method": self.method, "precision": s.precision, "batch": s.batch_size,
            "seq": s.seq_len, "gradient_checkpointing": s.gradient_checkpointing, "attention": s.attention,
            "adamw_impl": s.adamw_impl, "nproc": self.nproc, "zero": s.zero_stage, "rank": o.rank,
            "targets": ",".join(o.targets) if o.targets else None, "virtual_tokens": o.virtual_tokens,
            "bottleneck": o.bottleneck, "adapter_variant": o.adapter_variant,
            "prefix_projection": o.prefix_projection, "quant_bits": o.quant_bits,
            "save_checkpoint": self.save_checkpoint, "timed_steps": self.timed_steps,
        }
        out.update({k: getattr(o, k) for k in OPTION_DEFAULTS if getattr(o, k) != OPTION_DEFAULTS[k]})
        out.update({k: getattr(s, k) for k in SETUP_KEYS if getattr(s, k) != SETUP_DEFAULTS[k]})
        out["model" if self.model is not None else "config"] = self.model if self.model is not None else self.config
        return dict(sorted(out.items()))

    @property
    def key(self) -> str:
        """What identifies the run across resumes: every key but how it is executed."""
        return portable_key({k: v for k, v in self.keys().items() if k not in NOT_IN_KEY})

    @property
    def model_label(self) -> str:
        return self.model if self.model is not None else (Path(str(self.config)).parent.name or str(self.config))

    @property
    def label(self) -> str:
        """`gpt2 lora bf16 b1xs128 ckpt foreach`: what a table row or a progress line calls the run."""
        s = self.setup
        bits = [self.model_label, self.method, s.precision, f"b{s.batch_size}xs{s.seq_len}"]
        if s.gradient_checkpointing:
            bits.append("ckpt")
        if s.attention != "sdpa":
            bits.append(s.attention)
        if self.method == "qlora":
            bits += [f"{self.options.quant_bits}bit"] + ([] if s.kbit_preparation else ["no-kbit"]) + \
                ([] if s.kbit_gradient_checkpointing or not s.kbit_preparation else ["kbit-no-ckpt"]) + \
                ([f"bnb{s.bitsandbytes_version}"] if s.bitsandbytes_version else [])
        if s.optimizer != "adamw":
            bits.append(s.optimizer)
        bits.append(s.adamw_impl)
        if self.nproc > 1:
            bits.append(f"nproc{self.nproc} zero{s.zero_stage}")
        if s.sharding is not None:
            bits.append(s.sharding)
        return " ".join(bits)

    def with_setup(self, **changes: Any) -> "RunRequest":
        return replace(self, setup=replace(self.setup, **changes))


def portable_key(keys: dict[str, Any] | str) -> str:
    """A run key (or a recorded one, as JSON) the same in every checkout: a suite's config path, recorded absolute,
    from its `bench/` folder on (else a run resumed in another worktree or clone runs again)."""
    d = json.loads(keys) if isinstance(keys, str) else dict(keys)
    config = d.get("config")
    if isinstance(config, str):
        parts = config.replace("\\", "/").split("/")
        if "bench" in parts:
            d["config"] = "/".join(parts[len(parts) - 1 - parts[::-1].index("bench"):])
    return json.dumps(d, sort_keys=True, separators=(",", ":"))
