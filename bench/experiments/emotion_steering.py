"""What the emotion-steering experiments share: their arguments, the evaluation settings (each
emotion's steering-success task on the dev scenarios, the facts under every transplanted row), the
accuracies a grid run gives, and the table cells made from them."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

from experiment_data import (
    add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata,
)
from lm_eval_contrans.cache import cache_root
from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
FACTS = "contrans_facts"


def emotion_task(emotion: str) -> str:
    return f"contrans_emotion_{emotion}"


def add_arguments(parser, emotions: bool = True) -> None:
    """--data, --limit (scenarios per emotion task), --batch-size, --json, --render (and --emotions)."""
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, default=40, help="scenarios per emotion task (make_results.py uses 40)")
    if emotions:
        parser.add_argument("--emotions", nargs="+", default=EMOTIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser, render=True)


def parse_arguments(description: str, render: Callable[[dict], str], emotions: bool = True,
                    more: Callable[[argparse.ArgumentParser], object] | None = None) -> argparse.Namespace | None:
    """An experiment's arguments (`add_arguments`, then what `more` adds), or None when --render has
    printed a saved run and there is nothing to run."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    add_arguments(parser, emotions)
    if more is not None:
        more(parser)
    args = parser.parse_args()
    return None if printed_from_saved(args, render) else args


class Stopwatch:
    """Seconds since the run started, and log lines stamped with them (long runs are followed in their log)."""

    def __init__(self) -> None:
        self.started = time.time()

    @property
    def seconds(self) -> float:
        return time.time() - self.started

    def log(self, message: str) -> None:
        print(f"[{self.seconds:6.0f} s] {message}", flush=True)


def settings(data: Path, limit: int, batch_size: int) -> EvalSettings:
    """`limit` scenarios per emotion task, every fact, no bootstrap (acc's standard error is analytic)."""
    return EvalSettings(tasks=[], limit={**{emotion_task(e): limit for e in EMOTIONS}, FACTS: None}, batch_size=batch_size,
                        device="cpu", bootstrap_iters=0, task_metadata=task_metadata(data))


def grid(name: str, args) -> Grid:
    """The grid of experiment `name` (its folder in the cache) under `settings`, for parsed `add_arguments`;
    says on which machine and with how many scenarios it runs."""
    print(f"machine: {machine()}; {args.limit} scenarios per emotion task", flush=True)
    return Grid(cache_root() / "experiments" / name, settings(data_folder(args.data), args.limit, args.batch_size))


def base_row(target: str, emotions: list[str]) -> GridRow:
    return GridRow("base", "base", target, alpha=0.0, tasks=tuple(map(emotion_task, emotions)) + (FACTS,))


def accuracies(rows) -> dict:
    """{row name: {task: {"acc,none": ..., "acc_stderr,none": ...}}} from a grid run's rows."""
    return {row.name: {task: {metric: value for metric, value in results.items() if metric.startswith("acc")}
                       for task, results in row.results.items()} for row in rows}


def cell(scores: dict, row: str, task: str) -> str:
    """Accuracy to two places, with its standard error when lm-eval gave one."""
    stderr = scores[row][task].get("acc_stderr,none")
    return f"{scores[row][task]['acc,none']:.2f}" + (f" ± {stderr:.2f}" if isinstance(stderr, float) else "")


def above_controls(scores: dict, row: str, controls: list[str], task: str, documents: int) -> bool:
    """Whether `row`'s accuracy on `task` exceeds every control row's by more than two standard errors
    of the difference (binomial, unpaired, over `documents` documents each)."""
    ours = scores[row][task]["acc,none"]
    theirs = [scores[control][task]["acc,none"] for control in controls]
    return all(ours - other > 2 * math.sqrt((ours * (1 - ours) + other * (1 - other)) / documents) for other in theirs)


def steered(scores: dict, rows_by_emotion: dict[str, str], threshold: float = 0.8) -> int:
    """How many emotions reach `threshold` steering success in the named rows."""
    return sum(scores[row][emotion_task(emotion)]["acc,none"] >= threshold for emotion, row in rows_by_emotion.items())
