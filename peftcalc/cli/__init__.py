"""The `peftcalc` command line: each command parses options, calls the core, renders the result."""

from __future__ import annotations

import click

from peftcalc.errors import PeftcalcError


class Group(click.Group):
    """Turns our user-facing errors into a one-line message and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PeftcalcError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="peftcalc")
def main() -> None:
    """How much memory, disk, time and money fine-tuning a language model costs with each method.

    \b
    Example:
      peftcalc estimate --params 7e9 --rank 8
    """


def _register() -> None:
    import importlib
    import pkgutil

    import peftcalc.cli as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("options",):
            importlib.import_module(f"peftcalc.cli.{mod.name}")


_register()
