"""Makes `lm_eval --model contrans` work without a wrapper script.

lm-eval 0.4.13 discovers model types only through its own registry and has no entry-point
mechanism for third-party models. The wheel therefore ships `lm_eval_contrans_plugin.pth`, which
imports this module at interpreter start-up. It installs an import hook that waits for
`lm_eval.api.registry` to be imported and then registers a *lazy* placeholder string, so that
neither lm-eval nor torch is imported by programs that never use lm-eval, and our own model module
is imported only when someone asks for `--model contrans`.

Only cheap standard-library modules may be imported here (not even importlib.abc, which costs
~25 ms): this runs in every Python process of the environment.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from types import ModuleType

REGISTRY_MODULE = "lm_eval.api.registry"
TASK_MANAGER_MODULE = "lm_eval.tasks.manager"
MODEL_NAME = "contrans"
MODEL_TARGET = "lm_eval_contrans.lm_eval_model:ConTransLM"


def register_model(registry_module: ModuleType) -> None:
    """Register the lazy `contrans` placeholder in lm-eval's model registry (idempotent).

    lm-eval fills its registry with the built-in models only when `get_model` finds it empty, so
    registering into an empty registry would hide `hf` and friends: load the built-in (lazy,
    cheap) placeholders first.
    """
    import lm_eval.models  # noqa: F401  (registers lm-eval's own placeholders)

    model_registry = registry_module.model_registry
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def register_tasks(manager_module: ModuleType) -> None:
    """Let lm-eval's TaskManager index our shipped task YAMLs next to its own (idempotent)."""
    from lm_eval_contrans.tasks_path import add_tasks_to_task_manager

    add_tasks_to_task_manager(manager_module)


# CONTRANS_ADD_TASKS=0 leaves lm-eval's TaskManager untouched; our tasks then need
# `--include_path <this package's tasks folder>` (`contrans tasks-path` prints it).
ADD_TASKS_VARIABLE = "CONTRANS_ADD_TASKS"
_AFTER_IMPORT = {REGISTRY_MODULE: register_model}
if os.environ.get(ADD_TASKS_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off"):
    _AFTER_IMPORT[TASK_MANAGER_MODULE] = register_tasks


class _ThenRegister:
    """Delegates to the real loader, then runs our registration on the fresh module."""

    def __init__(self, loader, after) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._after(module)
        except Exception as error:  # never break lm-eval because of us
            print(f"lm_eval_contrans: could not register with lm-eval: {error!r}", file=sys.stderr)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _LmEvalImportHook:
    def find_spec(self, fullname, path, target=None):
        after = _AFTER_IMPORT.get(fullname)
        if after is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenRegister(spec.loader, after)
        return spec


def install() -> None:
    """Install the hook once; register at once where lm-eval was imported already."""
    if any(isinstance(finder, _LmEvalImportHook) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _LmEvalImportHook())
    for name, after in _AFTER_IMPORT.items():
        if name in sys.modules:
            after(sys.modules[name])


install()
