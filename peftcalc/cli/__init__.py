"""The `peftcalc` command line: each command parses options, calls the core, renders the result.

Commands live in their own modules and are imported only when invoked, so `peftcalc estimate` never
pays for the imports of `measure` or `report`.
"""

from __future__ import annotations

import importlib

import click

from peftcalc.errors import PeftcalcError

# command name -> module defining a click command of the same name (attribute `<name>_cmd`)
COMMANDS = {
    "estimate": "peftcalc.cli.estimate",
    "models": "peftcalc.cli.models",
    "methods": "peftcalc.cli.methods",
    "gpus": "peftcalc.cli.gpus",
    "nodes": "peftcalc.cli.nodes",
    "plan": "peftcalc.cli.plan",
    "check": "peftcalc.cli.check",
    "measure": "peftcalc.cli.measure",
    "bench": "peftcalc.cli.bench",
    "validate": "peftcalc.cli.validate",
    "report": "peftcalc.cli.report",
}


class Group(click.Group):
    """Loads commands lazily, and turns our user-facing errors into a one-line message and exit status 1
    (2 for bad input: unreadable, malformed or contradictory files, unwritable output), never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(COMMANDS[name])
        except ModuleNotFoundError as e:
            if e.name == COMMANDS[name]:
                return None  # a command whose module is not written yet
            raise
        return getattr(module, f"{name}_cmd")

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PeftcalcError as e:
            raise _exit(str(e), e.exit_code) from None
        except OSError as e:  # a file the OS refused (permissions, a read-only place, a full disk)
            if e.filename is None:
                raise
            raise _exit(f"cannot use {str(e.filename)!r}: {e.strerror or e}", 2) from None


def _exit(message: str, code: int) -> click.ClickException:
    """A one-line error with the exit status its kind of error carries (1: cannot answer, 2: bad input)."""
    error = click.ClickException(message)
    error.exit_code = code
    return error


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="peftcalc")
def main() -> None:
    """How much memory, disk, time and money fine-tuning a language model costs with each method.

    \b
    Example:
      peftcalc estimate --params 7e9 --rank 8
    """
