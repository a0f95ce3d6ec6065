"""Model FLOPs utilisation (MFU): achieved training FLOP/s over the GPU's dense peak for the compute dtype (PaLM,
Chowdhery et al. 2022, arXiv:2204.02311, appendix B), with the FLOPs of compute.py (recomputation included).

The planner no longer assumes an MFU: it times the replayed step's kernels at the GPU's measured rates
(hardware/compute_time.py) and reports the MFU that time implies. `--mfu` replaces that model with the user's own
measured utilisation, applied to every GPU and method.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftcalc.compute import check_mfu

IMPLIED = "implied by the kernel model's time: model FLOPs / (step compute time x dense peak)"
GIVEN = "given with --mfu"


@dataclass(frozen=True)
class Mfu:
    value: float  # fraction of the dense peak, in (0, 1] when given; what a predicted time implies otherwise
    basis: str  # IMPLIED or GIVEN


def given_mfu(override: float | None) -> Mfu | None:
    """--mfu, checked (None: the kernel model times the step)."""
    if override is None:
        return None
    check_mfu(override)
    return Mfu(override, GIVEN)
