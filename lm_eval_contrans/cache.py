"""The on-disk cache: de-quantized GGUF models and built transplants.

Location: `$CONTRANS_CACHE`, else `$XDG_CACHE_HOME/lm_eval_contrans`, else
`~/.cache/lm_eval_contrans`. Entries are written to a temporary sibling and renamed into place, so
a build killed half-way never leaves an entry that later loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    explicit = os.environ.get("CONTRANS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lm_eval_contrans"


def content_key(fields: dict) -> str:
    """A stable hash of JSON-serialisable identity fields."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_dir(kind: str, key: str, produce: Callable[[Path], None]) -> Path:
    """Return the folder for (kind, key), calling `produce(tmp_folder)` to fill it if missing."""
    final = cache_root() / kind / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        produce(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # another process won the race; theirs is equally valid
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
