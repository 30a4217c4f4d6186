"""Where and in what dtype a model runs: dtype names, the default device, the device HFLM evaluates on."""

from __future__ import annotations

import logging
import os

import torch

from lm_eval_contrans.errors import ConTransError

logger = logging.getLogger(__name__)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConTransError("dtype", f"unknown torch dtype {dtype!r}")
    return resolved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluation_device(requested: str | None) -> str:
    """The device HFLM will evaluate on for `device=requested`: that device where it exists, else
    (like HFLM) CUDA where available, else the CPU. lm-eval passes `cuda:0` when `--device` is not
    given; building the transplant there on a CPU-only machine would crash. Under a data-parallel
    launch each rank builds on its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    if requested:
        try:
            torch.empty(0, device=requested)
            return str(requested)
        except (RuntimeError, AssertionError, ValueError) as error:
            fallback = default_device()
            # lm-eval's own default is cuda:0, so on a CPU-only machine this is the normal case
            log = logger.info if requested in ("cuda", "cuda:0") else logger.warning
            reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
            log("device %r is not usable here (%s); using %s", requested, reason, fallback)
            return fallback
    return default_device()
