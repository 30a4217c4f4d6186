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
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from lm_eval_contrans.errors import ConTransError

if TYPE_CHECKING:
    import torch


logger = logging.getLogger(__name__)


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


def publish(temporary: str | os.PathLike, final: str | os.PathLike) -> None:
    """Atomically move a finished temporary file into place, readable as a normal new file would be
    (mkstemp creates files only their owner can read)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, final)


def cached_dir(kind: str, key: str, produce: Callable[[Path], None],
               sound: Callable[[Path], bool] = lambda folder: True) -> Path:
    """Return the folder for (kind, key), calling `produce(tmp_folder)` to fill it if missing. A folder that
    is not `sound` (a file in it truncated or damaged since) is made again, once, with a warning naming it."""
    final = cache_root() / kind / key
    if final.is_dir() and sound(final):
        return final
    _make_folder(final.parent)
    with FileLock(str(final) + ".lock"):
        _remove_leftovers(final.parent, key)
        if final.is_dir() and not sound(final):
            logger.warning("the cache entry %s is damaged; making it again", final)
            shutil.rmtree(final)
        if not final.is_dir():
            _produce_into(final, key, produce)
    return final


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConTransError("CONTRANS_CACHE", f"cannot make the cache folder {folder}: {error.strerror or error} "
                                              "(set CONTRANS_CACHE to a writable folder)") from None
    if not os.access(folder, os.W_OK):
        raise ConTransError("CONTRANS_CACHE", f"the cache folder {folder} is not writable (set CONTRANS_CACHE to a "
                                              "writable folder)")


def _remove_leftovers(folder: Path, stem: str) -> None:
    """Temporary files and folders of an entry whose writer died (`kill -9`, power loss) before it renamed
    them into place. Called under the entry's lock, so no live writer owns them."""
    for leftover in folder.glob(f".{stem}.*"):
        logger.info("removing %s, left by an interrupted write", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _produce_into(final: Path, key: str, produce: Callable[[Path], None]) -> None:
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


def cached_tensor(kind: str, fields: dict, compute: Callable[[], "torch.Tensor"] | None = None):
    """A tensor stored under a content key; `compute()` fills a miss (None: just look up).

    Returns None on a miss without `compute`. Written atomically (temporary file, then rename).
    """
    path = _entry_path(kind, fields)
    tensor = _read_entry(path)
    if tensor is not None or compute is None:
        return tensor
    fill_entries({path: (kind, fields)}, lambda missing: {path: compute()})
    return _read_entry(path)


def fill_entries(entries: Mapping[Hashable, tuple[str, dict]],
                 record: Callable[[list], Mapping[Hashable, "torch.Tensor"]]) -> list:
    """Make every entry (name -> (kind, fields)) exist in the cache; returns the names this call recorded.

    `record(missing_names)` computes the missing entries in one go (one forward pass fills every
    block). Each missing entry's lock is held from the check, through the recording, to the write:
    of several processes that ask at the same instant (the ranks of `accelerate launch`), one
    records and the others wait and then find the entries, without loading the model. Locks are
    taken in path order, so two processes asking for overlapping sets cannot deadlock."""
    missing = [name for name, (kind, fields) in entries.items() if not has_tensor(kind, fields)]
    if not missing:
        return []
    paths = {name: _entry_path(*entries[name]) for name in missing}
    with ExitStack() as locks:
        for path in sorted(set(paths.values())):
            _make_folder(path.parent)
            locks.enter_context(FileLock(str(path) + ".lock"))
            _remove_leftovers(path.parent, path.stem)
        missing = [name for name in missing if not has_tensor(*entries[name])]  # filled while we waited
        if missing:
            recorded = record(missing)
            for name in missing:
                _write_entry(paths[name], recorded[name], entries[name][1])
    return missing


def has_tensor(kind: str, fields: dict) -> bool:
    """Whether a sound entry exists, checked from its header without reading the tensor (a damaged
    entry is removed, as `cached_tensor` would)."""
    from safetensors import SafetensorError, safe_open

    path = _entry_path(kind, fields)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:  # checks the data covers the file
            if "tensor" in handle.keys():
                return True
    except (SafetensorError, OSError):
        pass
    logger.warning("the cache entry %s is damaged; it will be recorded again", path)
    path.unlink(missing_ok=True)
    return False


def _entry_path(kind: str, fields: dict) -> Path:
    return cache_root() / kind / f"{content_key(fields)}.safetensors"


def _read_entry(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))["tensor"]
    except (SafetensorError, OSError, KeyError):
        logger.warning("the cache entry %s is damaged; it will be recorded again", path)
        path.unlink(missing_ok=True)  # a damaged entry is recomputed, never trusted
        return None


def _write_entry(path: Path, tensor, fields: dict) -> None:
    from safetensors.torch import save_file

    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({"tensor": tensor.contiguous()}, temporary,
                  metadata={"fields": json.dumps(fields, sort_keys=True)})
        publish(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
