"""Helpers of the performance benchmarks: timers, a fresh cache holding only the de-quantized GGUF
folders, and what they share with the experiments (the model pair, the data folder, --json and the
saved runs), from bench/experiments/experiment_data.py. Each benchmark prints its ratio against a
baseline measured in the same process or session."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def _experiment_data():
    """bench/experiments/experiment_data.py, loaded from its file: a benchmark runs with only its own
    folder on its path (the experiments import the module by name)."""
    spec = importlib.util.spec_from_file_location("experiment_data", Path(__file__).resolve().parents[1] / "experiments"
                                                  / "experiment_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _experiment_data()
# the benchmarks import these from here
SOURCE, TARGET = _shared.SOURCE, _shared.TARGET
add_data_argument, add_json_argument, data_folder = _shared.add_data_argument, _shared.add_json_argument, _shared.data_folder
machine, task_metadata, write_json = _shared.machine, _shared.task_metadata, _shared.write_json


@contextmanager
def timed(results: list):
    start = time.perf_counter()
    yield
    results.append(time.perf_counter() - start)


def interleaved_medians(runs: dict, repeats: int) -> dict[str, float]:
    """{name: median seconds of `runs[name]()`} over `repeats`, the order turned each repeat so that no run
    always follows the same one on this noisy machine."""
    names, times = list(runs), {name: [] for name in runs}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            with timed(times[name]):
                runs[name]()
    return {name: median(values) for name, values in times.items()}


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
