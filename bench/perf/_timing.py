"""Helpers of the performance benchmarks: timers and a fresh cache holding only the de-quantized GGUF
folders. Each benchmark prints its ratio against a baseline measured in the same process or session."""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from lm_eval_contrans.experiments.data import (  # noqa: F401 (the benchmarks import these from here)
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, task_metadata, write_json,
)


@contextmanager
def timed(results: list):
    start = time.perf_counter()
    yield
    results.append(time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values)


def fresh_cache_with_gguf() -> Path:
    """A new CONTRANS_CACHE holding only the de-quantized GGUF folders (warmed, not timed)."""
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    folder = Path(tempfile.mkdtemp(prefix="contrans-bench-"))
    # the states a run records here take gigabytes: gone when the run ends (the GGUF link is removed, not followed)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    user_gguf = Path(os.environ.get("CONTRANS_CACHE", Path.home() / ".cache" / "lm_eval_contrans")) / "gguf"
    os.environ["CONTRANS_CACHE"] = str(folder)
    if user_gguf.is_dir():  # reuse de-quantized folders already made (read-only use)
        (folder / "gguf").symlink_to(user_gguf, target_is_directory=True)
    for name in (SOURCE, TARGET):
        pretrained_path(parse_model_spec(name, "model"))
    return folder
