"""What a profile depends on: the model's config (by content), the method and its options, and the setup flags
that change what the traced step allocates (batch and sequence are its variables; the optimizer and the
parallelism act outside the forward and backward)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.setup import Setup

STEP_FLAGS = ("precision", "attention", "gradient_checkpointing", "reentrant_checkpointing", "loss", "packing",
              "padded", "adapter_dtype", "kbit_preparation", "kbit_gradient_checkpointing", "bitsandbytes_version")


def model_config(spec: ModelSpec) -> Mapping[str, Any]:
    """The config the model is built from: a derived inventory's (class defaults filled in), else the config.json."""
    derivation = getattr(spec, "derivation", None)
    return derivation.config if derivation is not None else spec.hf_config


def config_sha(spec: ModelSpec) -> str:
    text = json.dumps(dict(model_config(spec)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def key_parts(spec: ModelSpec, method: Method, setup: Setup, accumulating: bool = False) -> dict[str, Any]:
    """What a profile depends on, besides the library versions."""
    return {"config_sha256": config_sha(spec), "method": repr(method),
            "setup": {f: getattr(setup, f) for f in STEP_FLAGS}, "accumulating": accumulating}
