"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""


class PeftcalcError(ValueError):
    """Bad input or an impossible request, with a message meant for the user."""


class ConfigError(PeftcalcError):
    """A config.json that cannot be read or describes something we do not support."""
