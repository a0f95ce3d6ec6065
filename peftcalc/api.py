"""The Python API: what the CLI computes, for notebooks and scripts.

    >>> import peftcalc
    >>> cfg = peftcalc.from_file("examples/llama-3/qlora.yml")          # doctest: +SKIP
    >>> r = peftcalc.estimate(cfg, model="llama-3-8b", batch=1)          # doctest: +SKIP
    >>> r.method("qlora").memory.total                                   # doctest: +SKIP
    >>> peftcalc.estimate(model="llama-3.1-8b", method="lora", rank=16, seq=2048).to_dict()  # doctest: +SKIP
    >>> peftcalc.plan(cfg, model="llama-3-8b", gpu=["a100-80gb", "rtx-4090"], tokens=20e6)   # doctest: +SKIP

Keyword arguments are the command's options by their long names (`gradient_checkpointing=True`, `batch=4`,
`targets=["q_proj", "v_proj"]`, `gpu=["h100-80gb"]`); as on the command line, they override the files'
values. The options are parsed by the same click commands the CLI runs, so every check and default is the
CLI's. Results are the CLI's typed results (peftcalc.render.results): `.text()` is what it prints, `.to_dict()`
its --json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from peftcalc.configs import TrainingConfig, read_config
from peftcalc.errors import PeftcalcError

def from_file(path: str | Path, kind: str | None = None) -> TrainingConfig:
    """A training config read: its kind, the settings it gives and every field's fate (the "from FILE" section)."""
    return read_config(path, kind)


def estimate(*files: str | Path | TrainingConfig, **options: Any) -> Any:
    """Memory, parameters and checkpoint size of each method (`peftcalc estimate`): an EstimateResult."""
    from peftcalc.cli.estimate import estimate_cmd, estimate_result

    with _context(estimate_cmd, files, options) as ctx:
        return estimate_result(ctx, ctx.params)


def plan(*files: str | Path | TrainingConfig, **options: Any) -> Any:
    """GPUs, time and cost (`peftcalc plan`): a PlanResult (it does not raise when nothing fits: every option
    is in it with its verdict)."""
    from peftcalc.cli.plan import plan_cmd, plan_result

    with _context(plan_cmd, files, options) as ctx:
        return plan_result(ctx, ctx.params)


def _context(command: click.Command, files: tuple[Any, ...], options: dict[str, Any]) -> click.Context:
    args: list[str] = []
    for f in files:
        args += ["--from", f.path if isinstance(f, TrainingConfig) else str(f)]
    params: dict[str, click.Option] = {}  # by long flag name (gpu, model, method) and keyword name (gpu_ids)
    for p in command.params:
        if isinstance(p, click.Option) and p.name not in ("as_json", "as_csv", "units"):
            params.update({o.lstrip("-").replace("-", "_"): p for o in p.opts if o.startswith("--")})
            params.setdefault(p.name, p)
    for key, value in options.items():
        p = params.get(key)
        if p is None:
            known = ", ".join(sorted(k for k, q in params.items() if k == max(q.opts, key=len).lstrip("-")
                                     .replace("-", "_")))
            raise PeftcalcError(f"unknown option {key!r} for {command.name}; known: {known}")
        args += _option_args(p, value)
    try:
        return command.make_context(command.name or "peftcalc", args)
    except click.ClickException as e:
        raise PeftcalcError(e.format_message()) from None


def _option_args(p: click.Option, value: Any) -> list[str]:
    flag = max(p.opts, key=len)
    if p.is_flag:
        return [flag] if value else []
    values = value if p.multiple and isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, float) and v.is_integer() and p.name in ("tokens", "params"):
            v = int(v)
        out += [flag, str(v)]
    return out
