"""A command's keyword arguments with training config files under them: the files give values, flags given on
the command line win, and every field's line in the "from FILE" section says what finally happened to it
(overridden by a flag or a later file, or computed with a fallback because peftcalc does not model it yet).

Used the same way by the CLI (`given` = the flags click saw on the command line) and the Python API (`given` =
the keyword arguments passed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, MutableMapping

from peftcalc.configs.detect import TRAINING_KINDS
from peftcalc.configs.modelled import fallback
from peftcalc.configs.result import FieldUse, Status, TrainingConfig
from peftcalc.errors import PeftcalcError, InputError

MODEL_FLAGS = ("model_name", "config_path", "params")
SETUP_ONLY = frozenset({"loss", "packing", "reentrant_checkpointing", "kbit_preparation", "optimizer_state_dtype",
                        "offload_params", "tp", "sharding", "fsdp_backward_prefetch", "fsdp_forward_prefetch",
                        "ds_reduce_bucket_size", "ds_prefetch_bucket_size", "ds_param_persistence_threshold",
                        "ds_max_live_parameters", "ds_max_reuse_distance", "ds_auto_buckets"})
# (settings a Setup takes even where the command has no flag yet)


@dataclass(frozen=True)
class FromFiles:
    """What the files gave, field by field, after the command line had its say."""

    configs: tuple[TrainingConfig, ...]
    model: str | None  # how the file's model was resolved ("NousResearch/Meta-Llama-3-8B -> llama-3-8b ..."), or why not
    notes: tuple[str, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.configs)

    def to_dict(self) -> dict[str, Any]:
        return {"files": [c.to_dict() for c in self.configs], "model": self.model, "notes": list(self.notes)}


def flag(name: str) -> str:
    return {"model_name": "--model", "config_path": "--config", "methods": "--method"}.get(
        name, "--" + name.replace("_", "-"))


def merge(kw: MutableMapping[str, Any], given: Iterable[str], configs: Iterable[TrainingConfig],
          methods_key: str = "method") -> FromFiles:
    """Put the files' settings into `kw` under the flags in `given`; launchers (DeepSpeed, accelerate) after the
    training configs, later files over earlier ones. `methods_key`: "method" (one) or "methods" (a tuple)."""
    ordered = sorted(configs, key=lambda c: c.kind not in TRAINING_KINDS)
    given = set(given)
    winner: dict[str, tuple[Any, int]] = {}
    for i, c in enumerate(ordered):
        for name, value in c.settings.items():
            winner[name] = (value, i)
    notes: list[str] = [w for c in ordered for w in c.warnings]
    fates: dict[tuple[int, str], str] = {}  # (config, setting) -> what became of it
    fell_back: dict[tuple[int, str], str] = {}
    model = _model(kw, given, winner, ordered, fates)
    for name, (value, i) in winner.items():
        if name == "model_name":
            continue
        key = methods_key if name == "method" else name
        for j, c in enumerate(ordered):
            if j != i and name in dict(c.settings.items()):
                fates[(j, name)] = f"overridden by {ordered[i].path}"
        if key in given:
            fates[(i, name)] = f"overridden by {flag(key)} on the command line"
            continue
        f = fallback(name, value)
        if f is not None:
            fell_back[(i, name)] = f.why
            if f.instead is not None:
                kw[key] = f.instead
            elif key in SETUP_ONLY or key not in kw:
                kw.pop(key, None)
            continue
        if key not in kw and name not in SETUP_ONLY:
            fates[(i, name)] = "not used by this command" + (" (`peftcalc plan` uses it for time and cost)"
                                                           if name in ("epochs", "steps") else "")
            continue
        kw[key] = (value,) if key == "methods" else value
    configs_out = tuple(_annotate(c, i, fates, fell_back) for i, c in enumerate(ordered))
    return FromFiles(configs_out, model, tuple(dict.fromkeys(notes)))


def _model(kw: MutableMapping[str, Any], given: set[str], winner: Mapping[str, tuple[Any, int]],
           ordered: list[TrainingConfig], fates: dict[tuple[int, str], str]) -> str | None:
    if "model_name" not in winner:
        if not given & set(MODEL_FLAGS) and not any(kw.get(k) is not None for k in MODEL_FLAGS):
            raise PeftcalcError(f"{', '.join(c.path for c in ordered)}: no model named in the file; give --model NAME, "
                                "--config PATH or --params N")
        return None
    name, i = winner["model_name"]
    if given & set(MODEL_FLAGS):
        chosen = next(flag(k) for k in MODEL_FLAGS if k in given)
        fates[(i, "model_name")] = f"overridden by {chosen} on the command line"
        return f"{name}: overridden by {chosen}"
    try:
        resolved, how = resolve_model(name)
    except PeftcalcError as e:
        field = next((u.field for u in ordered[i].fields if "model_name" in u.settings), "model")
        raise PeftcalcError(f"{ordered[i].path}: {field}: {e}; give --model NAME or --config PATH") from None
    kw["model_name"] = resolved
    fates[(i, "model_name")] = f"--model {resolved} ({how})"
    return f"{name} -> {resolved} ({how})"


def resolve_model(name: str) -> tuple[str, str]:
    """A Hugging Face id or catalogue name as --model takes it; failing that, the one catalogue model whose
    Hugging Face id has the same repository name (NousResearch/Meta-Llama-3-8B is a copy of
    meta-llama/Meta-Llama-3-8B), said so in the output."""
    from peftcalc.model.catalogue import entry, get_model, model_names

    try:
        return get_model(name).name, "as --model resolves it"
    except PeftcalcError as error:
        repo = name.rsplit("/", 1)[-1].lower()
        same = [m for m in model_names() if str(entry(m).get("hf_id", "")).rsplit("/", 1)[-1].lower() == repo]
        if "/" in name and len(same) == 1:
            return same[0], f"the catalogue's {entry(same[0])['hf_id']}, matched by repository name"
        raise error


def _annotate(c: TrainingConfig, i: int, fates: Mapping[tuple[int, str], str],
              fell_back: Mapping[tuple[int, str], str]) -> TrainingConfig:
    fields = []
    for u in c.fields:
        notes = [fates[(i, s)] for s in u.settings if (i, s) in fates]
        why = [fell_back[(i, s)] for s in u.settings if (i, s) in fell_back]
        if why and u.status in (Status.USED, Status.DEFAULT):
            whole = all((i, s) in fell_back for s in u.settings)  # else the rest of what it gave is used
            u = replace(u, status=Status.NOT_MODELLED if whole else u.status,
                        detail=f"{u.detail}; not modelled yet: {'; '.join(why)}")
        if notes:
            u = replace(u, detail=f"{u.detail}; {'; '.join(dict.fromkeys(notes))}")
        fields.append(u)
    return replace(c, fields=tuple(fields))


def check_shape(files: FromFiles, spec: Any) -> None:
    """What a file says of the model's shape (peft's token_dim, num_layers) against the model resolved."""
    for c in files.configs:
        for field, attribute, value in c.expects:
            actual = getattr(spec.arch, attribute)
            if actual != value:
                raise InputError(f"{c.path}: {field}: {value} does not match {spec.name}'s {attribute} {actual}: the "
                                 "adapter was made for another model")


def used_fields(files: FromFiles) -> tuple[FieldUse, ...]:
    return tuple(u for c in files.configs for u in c.fields)
