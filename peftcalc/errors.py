"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""


class PeftcalcError(ValueError):
    """Bad input or an impossible request, with a message meant for the user (exit status 1)."""

    exit_code = 1


class InputError(PeftcalcError):
    """A file that cannot be read, parsed or written, or whose fields contradict each other: the message names
    the file and the field (exit status 2, as for bad usage; nothing is written)."""

    exit_code = 2


class ConfigError(PeftcalcError):
    """A config.json that cannot be read or describes something we do not support."""
