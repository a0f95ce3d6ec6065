"""The bookkeeping every reader shares: which fields it used, what each became, and what is left over.

A reader asks for fields (`get`), says what each became (`used`, `default`, `not_modelled`, `ignored`), and at the
end every field it did not speak for is reported: ignored when the kind's table of fields without effect lists it,
"not understood" otherwise. Nothing in a file is dropped without a word.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from peftcalc.configs.result import FieldUse, Settings, SETTING_NAMES, Status, TrainingConfig
from peftcalc.errors import InputError

NO_EFFECT = "no effect on memory, time or disk"
MISSING = object()


def show(value: Any, limit: int = 48) -> str:
    """A field's value as written, shortened: chat templates and dataset lists are long."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Reading:
    """One file being read: its fields, the settings they give, and each field's fate."""

    def __init__(self, path: str, kind: str, data: Mapping[str, Any]) -> None:
        self.path, self.kind, self.data = path, kind, data
        self.values: dict[str, Any] = {}
        self.uses: dict[str, FieldUse] = {}
        self.warnings: list[str] = []
        self.companions: list[str] = []
        self.expects: list[tuple[str, str, int]] = []

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """The value at a dotted path (`fsdp_config.offload_params`); `default` when absent or null."""
        value = self.lookup(key)
        return default if value is MISSING or value is None else value

    def lookup(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return MISSING
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        """The field is written with a value (a key left empty, `wandb_project:`, counts as absent)."""
        return self.lookup(key) not in (MISSING, None)

    def error(self, key: str, message: str) -> InputError:
        return InputError(f"{self.path}: {key}: {message}")

    # -- recording -----------------------------------------------------------------------------------------
    def set(self, **settings: Any) -> None:
        for name, value in settings.items():
            if name not in SETTING_NAMES:
                raise KeyError(name)
            self.values[name] = value

    def _record(self, key: str, status: Status, detail: str, value: str | None = None,
                settings: tuple[str, ...] = ()) -> None:
        if key in self.uses and status is not Status.USED:
            return  # the first word on a field stands (a field used is not later called ignored)
        if value is None:
            raw = self.lookup(key)
            value = "(absent)" if raw is MISSING else show(raw)
        if key in self.uses:
            settings = tuple(dict.fromkeys(self.uses[key].settings + settings))
        self.uses[key] = FieldUse(key, value, status, detail, self.path, settings)

    def used(self, key: str, detail: str, **settings: Any) -> None:
        """`key` gave these settings; `detail` says what it became."""
        self.set(**settings)
        self._record(key, Status.USED, detail, settings=tuple(settings))

    def default(self, name: str, value: Any, detail: str, **settings: Any) -> None:
        """A framework default the file leaves unsaid but that differs from peftcalc's own."""
        self.set(**settings)
        self._record(f"({name})", Status.DEFAULT, detail, show(value), tuple(settings))

    def not_modelled(self, key: str, detail: str, off: bool = True) -> None:
        """Understood, but its effect is not in the estimate. With `off`, a feature written as off (false, 0,
        empty) is reported as ignored instead."""
        value = self.lookup(key)
        if value is MISSING:
            return
        if off and value in (None, False, 0, "", [], {}):
            self._record(key, Status.IGNORED, "off")
        else:
            self._record(key, Status.NOT_MODELLED, detail)

    def ignored(self, key: str, detail: str = NO_EFFECT) -> None:
        if self.lookup(key) is not MISSING:
            self._record(key, Status.IGNORED, detail)

    def unknown(self, key: str, detail: str) -> None:
        self._record(key, Status.UNKNOWN, detail)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def rest_of(self, container: str, ignored: Mapping[str, str] | Iterable[str] = (), prefix: str = "") -> None:
        """The fields of the mapping `container` nobody spoke for: ignored if listed, else not understood.
        `prefix` is stripped before the lookup (FSDP keys written with or without `fsdp_`)."""
        node = self.lookup(container)
        if not isinstance(node, Mapping):
            return
        table = ignored if isinstance(ignored, Mapping) else dict.fromkeys(ignored, NO_EFFECT)
        for sub in node:
            key = f"{container}.{sub}"
            if key in self.uses or any(k.startswith(key + ".") for k in self.uses):
                continue
            name = sub[len(prefix):] if prefix and sub.startswith(prefix) else sub
            if name in table:
                self._record(key, Status.IGNORED, table[name])
            else:
                self.unknown(key, f"not a {container} field peftcalc knows")

    def finish(self, ignored: Mapping[str, str] | Iterable[str], containers: Iterable[str] = ()) -> TrainingConfig:
        """Every top-level field nobody spoke for: ignored when `ignored` lists it (or it is empty), else not
        understood. Fields of `containers` whose own fields were read are not reported again."""
        table = ignored if isinstance(ignored, Mapping) else dict.fromkeys(ignored, NO_EFFECT)
        spoken = {k.split(".")[0] for k in self.uses}
        for key, value in self.data.items():
            if key in self.uses or (key in spoken and key in set(containers)):
                continue
            if key in table:
                self._record(key, Status.IGNORED, table[key])
            elif value is None or value == "" or value == [] or value == {}:
                self._record(key, Status.IGNORED, "empty: the framework's default applies")
            elif key in spoken:
                continue
            else:
                self.unknown(key, f"not a field peftcalc knows for {self.kind} configs")
        return TrainingConfig(self.path, self.kind, Settings(**self.values), tuple(self.uses.values()),
                              tuple(self.warnings), tuple(self.companions), tuple(self.expects))
