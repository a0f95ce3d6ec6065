"""What `estimate` and `plan` print, as typed results: the numbers, the uncertainty bands, the files read.

The CLI renders these; the Python API (`peftcalc.estimate`, `peftcalc.plan`) returns them. `text()` is the
CLI's output, `to_dict()` its --json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from peftcalc.estimate import Estimate, MethodEstimate
from peftcalc.units import Unit

if TYPE_CHECKING:  # annotations only: an estimate does not import the planner or the config readers
    from peftcalc.configs.apply import FromFiles
    from peftcalc.hardware.planner import Plan


@dataclass(frozen=True)
class EstimateResult:
    estimate: Estimate
    bands: Mapping[str, Any] = field(default_factory=dict)  # method -> its peak's Uncertainty (or None)
    files: FromFiles | None = None  # the --from files, field by field

    def method(self, name: str) -> MethodEstimate:
        return self.estimate.result(name)

    @property
    def results(self) -> tuple[MethodEstimate, ...]:
        return self.estimate.results

    def text(self, units: str = "GB") -> str:
        from peftcalc.render.estimate import estimate_text

        return estimate_text(self.estimate, Unit(units), self.bands, self.files)

    def to_dict(self) -> dict[str, Any]:
        from peftcalc.render.estimate import estimate_dict

        return estimate_dict(self.estimate, self.bands, self.files)

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    files: FromFiles | None = None

    @property
    def options(self) -> tuple[Any, ...]:
        return self.plan.options

    def shortlist(self, k: int = 3) -> dict[str, tuple[Any, ...]]:
        return self.plan.shortlist(k)

    def text(self, units: str = "GB") -> str:
        from peftcalc.render.plan import plan_text

        out = plan_text(self.plan, Unit(units), self.files)
        if self.files is not None:
            from peftcalc.render.from_files import from_text

            out += "\n\n" + from_text(self.files)
        return out

    def to_dict(self) -> dict[str, Any]:
        from peftcalc.render.plan import plan_dict

        out = plan_dict(self.plan, self.files)
        if self.files is not None:
            out["from"] = self.files.to_dict()
        return out

    def __str__(self) -> str:
        return self.text()
