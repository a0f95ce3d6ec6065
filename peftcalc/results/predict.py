"""The analytic prediction of a measured run, in the measured backend's terms — the one place that does it.

`predict` is what `peftcalc measure` records beside its measurement, what `peftcalc validate` compares
and what the validation report plots, so the three always agree:

- weights: parameters and buffers as stored, plus fp32 master copies (the meter sees them all);
- gradients, optimizer states: as `MemoryBreakdown` has them;
- activations: live after forward minus before it;
- peak: the most tensor bytes live at any moment, without the assumed CUDA overhead (which is no tensor).

`request_of` rebuilds what a committed record ran, from its suite keys or, for a result saved by
`peftcalc measure --json`, from its setup and method options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from peftcalc.errors import PeftcalcError
from peftcalc.methods import MethodOptions, make_method
from peftcalc.methods.base import Method
from peftcalc.model.spec import ModelSpec
from peftcalc.results.files import Record
from peftcalc.results.record import Bytes
from peftcalc.results.request import RunRequest
from peftcalc.setup import Setup


@dataclass(frozen=True)
class Prediction:
    bytes: Bytes
    peak_phase: str
    overhead_bytes: int  # the stated CUDA overhead lines, beside the tensor peak
    checkpoint_bytes: int


def predict(spec: ModelSpec, method: Method, setup: Setup, device: str = "cpu") -> Prediction:
    """The estimate of one run as the measured backend counts it (see the module docstring), for the device it
    ran on ("cpu" for traced and CPU runs: the CPU's attention paths and dropout)."""
    from peftcalc.estimate import estimate_method

    est = estimate_method(spec, method, setup, device="cuda" if device.startswith("cuda") else "cpu")
    m = est.memory
    b = Bytes(weights=m.weight_bytes + m.buffer_bytes + m.master_weight_bytes, gradients=m.gradient_bytes,
              optimizer_states=m.optimizer_state_bytes, activations=m.activation_bytes, peak=m.peak_bytes)
    return Prediction(b, m.peak_phase, m.overhead_bytes, est.checkpoint.checkpoint_bytes)


# detail.method_options holds the method dataclass's fields; their MethodOptions names
_OPTION_FIELDS = {"rank": "rank", "targets": "targets", "virtual_tokens": "virtual_tokens",
                  "bottleneck": "bottleneck", "variant": "adapter_variant", "projection": "prefix_projection"}


def request_of(record: Record) -> RunRequest:
    """What the record ran: its suite request, else one rebuilt from the result itself."""
    if record.request is not None:
        return record.request
    r = record.result
    if r.model is None or r.setup is None or not r.method:
        raise PeftcalcError("the record names no model, setup or method")
    given: Mapping[str, Any] = r.detail.method_options
    opts: dict[str, Any] = {ours: given[theirs] for theirs, ours in _OPTION_FIELDS.items() if theirs in given}
    if opts.get("targets") is not None:
        opts["targets"] = tuple(opts["targets"])
    if "base_storage" in given:  # results recorded before the bitsandbytes base (nf4 / int8)
        opts["quant_bits"] = 4 if given["base_storage"] == "nf4" else 8
    q = given.get("quantization")
    if isinstance(q, Mapping):
        opts.update(quant_bits=q["bits"], quant_type=q["quant_type"], double_quant=q["double_quant"],
                    quant_storage=q["storage"])
    nproc = len(r.per_rank) or 1
    return RunRequest(r.method, MethodOptions(**opts), r.setup, model=r.model.name, backend=r.backend, nproc=nproc)


def spec_of(request: RunRequest) -> ModelSpec:
    if request.config is not None:
        from peftcalc.model.hf_config import load_config

        return load_config(request.config)
    from peftcalc.model.catalogue import get_model

    return get_model(str(request.model))


def repredict(record: Record) -> Prediction:
    """Today's prediction for a committed run. Raises PeftcalcError (or what the estimate raises) when the
    run cannot be rebuilt."""
    request = request_of(record)
    device = "cpu" if record.result.backend == "trace" else record.result.device
    return predict(spec_of(request), make_method(request.method, request.options), request.setup, device)
