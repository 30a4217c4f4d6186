"""The on-disk cache: de-quantized GGUF models and recorded states.

Also the recorded states of each build step (concept vectors, anchor states), keyed on everything
that determines them, so that rebuilding with identical inputs never loads the source model, and a
new concept for the same pair skips the anchor passes.

Location: `$CONTRANS_CACHE`, else `$XDG_CACHE_HOME/lm_eval_contrans`, else
`~/.cache/lm_eval_contrans`. Entries are written to a temporary sibling and renamed into place, so
a build killed half-way never leaves an entry that later loads.

Nothing read back is trusted: a tensor entry records the key it was written under and a content hash
of what it holds, and every read checks both, its rank and that its values are finite. An entry that
fails (truncated, copied over by another entry, edited, a symbolic link, or written by a version
without hashes) is removed under its lock and recorded again, with a warning naming the file.
"""

from __future__ import annotations

import errno
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
# What an entry's metadata holds: "2" added the content hash. Entries without it are recorded again.
ENTRY_FORMAT = "2"
# The rank each kind of entry holds (a concept vector; anchor states: one row per text or token)
RANKS = {"concept_vectors": 1, "anchor_states": 2}


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
    is not `sound` (a file in it truncated or damaged since), or is a symbolic link, is made again, once, with
    a warning naming it."""
    final = cache_root() / kind / key
    if final.is_dir() and not final.is_symlink() and sound(final):
        return final
    _make_folder(final.parent)
    with FileLock(str(final) + ".lock"):
        _remove_leftovers(final.parent, key)
        if final.is_symlink() or (final.is_dir() and not sound(final)):
            linked = final.is_symlink()
            logger.warning("the cache entry %s %s; making it again", final,
                           "is a symbolic link, which the cache does not follow" if linked else "is damaged")
            final.unlink() if linked else shutil.rmtree(final)
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
        try:
            produce(staging)
        except Exception as error:
            if _disk_full(error):
                written = sum(file.stat().st_size for file in staging.rglob("*") if file.is_file())
                raise _no_space(final.parent, f"the step had written {_size(written)} when the disk filled") from None
            raise
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # another process won the race; theirs is equally valid
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _disk_full(error: BaseException) -> bool:
    """An OSError for a full disk, or safetensors' error for one (it reports the OS error in its message)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return type(error).__name__ == "SafetensorError" and ("os error 28" in text or "StorageFull" in text)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _no_space(folder: Path, needs: str) -> ConTransError:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return ConTransError("CONTRANS_CACHE", f"no space left in the cache folder {folder} ({_size(free)} free; {needs}): "
                                           "free space there, or set CONTRANS_CACHE to a folder with room")


def cached_tensor(kind: str, fields: dict, compute: Callable[[], "torch.Tensor"] | None = None):
    """A tensor stored under a content key; `compute()` fills a miss (None: just look up).

    Args:
        kind: the cache's sub-folder (concept_vectors, anchor_states, ...).
        fields: everything that determines the tensor; its key.
        compute: makes the tensor on a miss, or on an entry that fails its checks (None: just look up).

    Returns:
        The tensor, or None on a miss without `compute`. Written atomically (temporary file, then rename).

    Raises:
        ConTransError: an entry recorded afresh fails its checks again, or the cache folder is full.
    """
    path = _entry_path(kind, fields)
    tensor = _read_entry(path, kind, fields)
    if tensor is not None or compute is None:
        return tensor
    fill_entries({path: (kind, fields)}, lambda missing: {path: compute()})
    try:
        return _checked_entry(path, kind, fields)
    except _Unsound as failed:  # recorded once again already: something keeps changing it
        raise ConTransError("CONTRANS_CACHE", f"the cache entry {path} {failed} right after it was recorded again: "
                                              "something is changing the cache; set CONTRANS_CACHE to another "
                                              "folder") from None


def fill_entries(entries: Mapping[Hashable, tuple[str, dict]],
                 record: Callable[[list], Mapping[Hashable, "torch.Tensor"]]) -> list:
    """Make every entry (name -> (kind, fields)) exist in the cache; returns the names this call recorded.

    `record(missing_names)` computes the missing entries in one go (one forward pass fills every
    block). Each missing entry's lock is held from the check, through the recording, to the write:
    of several processes that ask at the same instant (the ranks of `accelerate launch`), one
    records and the others wait and then find the entries, without loading the model. Locks are
    taken in path order, so two processes asking for overlapping sets cannot deadlock. An entry
    that fails its checks counts as missing (it is removed, with a warning naming it)."""
    missing = [name for name, (kind, fields) in entries.items() if not has_tensor(kind, fields)]
    if not missing:
        return []
    paths = {name: _entry_path(*entries[name]) for name in missing}
    with ExitStack() as locks:
        for path in sorted(set(paths.values())):
            _make_folder(path.parent)
            locks.enter_context(FileLock(str(path) + ".lock"))
            _remove_leftovers(path.parent, path.stem)
        # filled while we waited (the lock is ours: a failing entry is removed without taking it again)
        missing = [name for name in missing if not _sound(*entries[name], locked=True)]
        if missing:
            recorded = record(missing)
            for name in missing:
                _write_entry(paths[name], recorded[name], *entries[name])
    return missing


def has_tensor(kind: str, fields: dict) -> bool:
    """Whether a sound entry exists: one that passes every check of a read (a failing entry is removed, with
    a warning naming it, as `cached_tensor` would)."""
    return _sound(kind, fields, locked=False)


def _sound(kind: str, fields: dict, locked: bool) -> bool:
    return _read_entry(_entry_path(kind, fields), kind, fields, locked=locked) is not None


def _entry_path(kind: str, fields: dict) -> Path:
    return cache_root() / kind / f"{content_key(fields)}.safetensors"


class _Unsound(Exception):
    """Why an entry cannot be trusted (the text follows the entry's path in the warning)."""


def _read_entry(path: Path, kind: str, fields: dict, locked: bool = False):
    """The entry's tensor if it passes its checks; None if it is missing or failed (then it is removed)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return _checked_entry(path, kind, fields)
    except _Unsound as failed:
        _discard(path, str(failed), locked)
        return None


def _checked_entry(path: Path, kind: str, fields: dict):
    """The entry's tensor, checked against its key and what was recorded when it was written.

    Raises:
        _Unsound: why it cannot be trusted.
    """
    from safetensors import SafetensorError, safe_open

    if path.is_symlink():  # another entry's file, or anything at all: the cache trusts only what it wrote
        raise _Unsound("is a symbolic link, which the cache does not follow")
    try:
        with safe_open(str(path), framework="pt") as handle:  # checks the header and that the data covers the file
            metadata = handle.metadata() or {}
            # a copy: safetensors maps the file, and a tensor on the file's pages changes when the file does
            tensor = handle.get_tensor("tensor").clone() if list(handle.keys()) == ["tensor"] else None
    except (SafetensorError, OSError):
        raise _Unsound("is damaged (truncated, or not a safetensors file)") from None
    if tensor is None:
        raise _Unsound("is damaged (it holds no entry)")
    if metadata.get("format") != ENTRY_FORMAT or "sha256" not in metadata:
        raise _Unsound("was written by an older version, without a content hash (stale)")
    if metadata.get("fields") != _fields_text(fields):
        raise _Unsound("holds the entry of other inputs (another entry was copied or moved over it)")
    if _digest(tensor) != metadata["sha256"]:
        raise _Unsound("does not hold what was written (its data differs from the content hash recorded then)")
    _check_values(tensor, kind)
    return tensor


def _check_values(tensor, kind: str) -> None:
    import torch

    rank = RANKS.get(kind)
    if rank is not None and tensor.dim() != rank:
        raise _Unsound(f"holds a {tensor.dim()}-D tensor where a {kind.replace('_', ' ')} entry is {rank}-D")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise _Unsound("holds non-finite values (NaN or inf)")


def _discard(path: Path, reason: str, locked: bool) -> None:
    """Remove a failing entry, under its lock unless the caller holds it; an entry another process replaced
    in the meantime (another file at the path now) is left to the next read's checks."""
    logger.warning("the cache entry %s %s; it will be recorded again", path, reason)
    seen = _identity(path)
    with ExitStack() as lock:
        if not locked:
            lock.enter_context(FileLock(str(path) + ".lock"))
        if _identity(path) == seen:
            path.unlink(missing_ok=True)


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _fields_text(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True)


def _digest(tensor) -> str:
    """A content hash of a tensor: its dtype, shape and bytes."""
    import torch

    data = tensor.detach().cpu().contiguous().reshape(-1)
    raw = data.view(torch.uint8) if data.numel() else torch.empty(0, dtype=torch.uint8)  # bfloat16 has no numpy type
    digest = hashlib.sha256(f"{data.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(raw.numpy().data)
    return digest.hexdigest()


def _write_entry(path: Path, tensor, kind: str, fields: dict) -> None:
    from safetensors.torch import save_file

    try:
        _check_values(tensor, kind)
    except _Unsound as failed:  # never cached: the next build would read it back as a sound entry
        raise ConTransError("dtype", f"the {kind.replace('_', ' ')} just recorded for {path.name} {failed}: "
                                     "the model overflows at this precision, or is broken; try dtype=float32") from None
    tensor = tensor.contiguous()
    needed = tensor.numel() * tensor.element_size() + 4096
    if shutil.disk_usage(path.parent).free < needed:
        raise _no_space(path.parent, f"this entry needs {_size(needed)}")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({"tensor": tensor}, temporary,
                  metadata={"fields": _fields_text(fields), "format": ENTRY_FORMAT, "sha256": _digest(tensor)})
        publish(temporary, path)
    except Exception as error:
        if _disk_full(error):
            raise _no_space(path.parent, f"this entry needs {_size(needed)}") from None
        raise
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
