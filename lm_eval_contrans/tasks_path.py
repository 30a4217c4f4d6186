"""Where the shipped task YAMLs and concept sets live, in a wheel and in a source checkout."""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """`concept_sets` or `tasks`: inside the package in a wheel, beside it in a checkout."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    return _PACKAGE_DIR.parent / name


def add_tasks_to_task_manager(manager_module: ModuleType) -> None:
    """Wrap TaskManager so that every instance also indexes our `tasks/` folder.

    lm-eval builds its task index from its own folder plus `include_path`; appending ours means
    `--tasks contrans_honesty_mc2` works with no flag. A user's `--include_path` still comes last
    and can override our tasks.
    """
    task_manager = manager_module.TaskManager
    if getattr(task_manager.__init__, "_contrans_wrapped", False):
        return
    original_init = task_manager.__init__

    @functools.wraps(original_init)
    def init_with_contrans_tasks(self, *args, include_path=None, **kwargs):
        ours = shipped_dir("tasks")
        if ours.is_dir() and any(ours.rglob("*.yaml")):
            paths = [] if include_path is None else (
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            )
            include_path = [str(ours), *paths]
        original_init(self, *args, include_path=include_path, **kwargs)

    init_with_contrans_tasks._contrans_wrapped = True
    task_manager.__init__ = init_with_contrans_tasks
