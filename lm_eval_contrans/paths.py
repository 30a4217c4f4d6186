"""Paths the user names for output, checked before any work, and names that become parts of paths."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from lm_eval_contrans.errors import ConTransError


def safe_name(name: str, fallback: str = "unnamed") -> str:
    """`name` as one file-name component: no folder separators, no `..`, not hidden (the original name is
    kept inside the files written under it)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-") or fallback


def writable_output(path: str | os.PathLike, argument: str, *, folder: bool = False) -> Path:
    """Check that `path` (a file, or with `folder` a folder to write files in) can be written, creating the
    folders that lead to it; refused naming `argument` otherwise. Probed with a real temporary file, so
    whatever the system refuses (permissions, a read-only mount, a full disk) is refused here, before the work."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConTransError(argument, f"{path} is a file, not a folder")
    if not folder and path.is_dir():
        raise ConTransError(argument, f"{path} is a folder; name a file to write")
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".contrans-write-check.", dir=where)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConTransError(argument, f"cannot write to {where}: {error.strerror or error}") from None
    return path
