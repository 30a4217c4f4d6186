"""Memory release: a model's weights freed now, and freed heap pages handed back to the OS."""

from __future__ import annotations

import gc

import torch
from torch import nn


def free_model(model: nn.Module) -> None:
    """Release a model's weights now, even while the caller still holds a reference to it."""
    try:
        model.to("meta")
    except Exception:  # some wrappers refuse; the references going out of scope still free it
        pass
    gc.collect()
    return_freed_memory_to_the_os()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def return_freed_memory_to_the_os() -> None:
    # glibc keeps freed heap pages for reuse; the target (loaded next) may not fit in them, so
    # without this the source's pages stay in the process's resident set on top of the target's.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
