"""Writing a user's file so that a crash or a kill never leaves it half written: write beside it, flush to
disk, then rename over it (one atomic step on POSIX). Unwritable places fail with a one-line message
(exit status 2) and leave nothing behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from peftcalc.errors import InputError


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise InputError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    return target


def check_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """`folder` exists (made if need be) and takes new files: checked before any work, so that a command that
    will write there fails at once, in one line, instead of after its work."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".peftcalc-probe-", dir=path))
    except OSError as e:
        raise InputError(f"cannot write {what} {str(path)!r}: {e.strerror or e}") from None
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
