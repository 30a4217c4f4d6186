"""Shared helpers of the bench scripts: the packaged pair, timers, a fresh cache folder."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SOURCE, TARGET = "packaged:smollm2-135m-instruct", "packaged:gemma-3-270m"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_task_metadata(shared: str | Path) -> dict:
    """lm-eval metadata pointing every shipped task at the local copies in ../shared/data."""
    shared = Path(shared)
    return {"truthfulqa_data": str(shared / "truthfulqa" / "truthfulqa_mc_dev.jsonl"),
            "toxigen_data": str(shared / "toxigen"), "emotion_data": str(shared / "emotions" / "scenarios_dev.json")}


def add_pair_arguments(parser) -> None:
    """--source/--target (default: the packaged pair) and --device, for runs on other machines."""
    parser.add_argument("--source", default=SOURCE, help="source model (default: the packaged SmolLM2)")
    parser.add_argument("--target", default=TARGET, help="target model (default: the packaged Gemma 3)")
    parser.add_argument("--device", default="cpu")


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.node() or 'host'}: {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}")


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
    user_gguf = Path(os.environ.get("CONTRANS_CACHE", Path.home() / ".cache" / "lm_eval_contrans")) / "gguf"
    os.environ["CONTRANS_CACHE"] = str(folder)
    if user_gguf.is_dir():  # reuse de-quantized folders already made (read-only use)
        (folder / "gguf").symlink_to(user_gguf, target_is_directory=True)
    for name in (SOURCE, TARGET):
        pretrained_path(parse_model_spec(name, "model"))
    return folder
