"""peftcalc's folder in the user's cache: $XDG_CACHE_HOME/peftcalc, else ~/.cache/peftcalc (XDG Base Directory
specification). What is there can always be computed again: a file that cannot be read is ignored."""

from __future__ import annotations

import os


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "peftcalc")
