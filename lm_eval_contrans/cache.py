"""The on-disk cache: de-quantized GGUF models and recorded states.

Also the recorded states of each build step (concept vectors, anchor states), keyed on everything
that determines them, so that rebuilding with identical inputs never loads the source model, and a
new concept for the same pair skips the anchor passes.

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def cached_tensor(kind: str, fields: dict, compute: Callable[[], "torch.Tensor"] | None = None):
    """A tensor stored under a content key; `compute()` fills a miss (None: just look up).

    Returns None on a miss without `compute`. Written atomically (temporary file, then rename).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = cache_root() / kind / f"{content_key(fields)}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["tensor"]
        except (SafetensorError, OSError, KeyError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, never trusted
    if compute is None:
        return None
    tensor = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({"tensor": tensor.contiguous()}, temporary,
                  metadata={"fields": json.dumps(fields, sort_keys=True)})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return tensor
