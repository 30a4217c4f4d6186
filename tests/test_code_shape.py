"""The package's shape, as the project's code rules state it: functions short enough to read whole."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_contrans"
LONGEST = 60  # lines, decorators and docstring included


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
                if node.end_lineno - first + 1 > LONGEST:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - first + 1} lines)")
    assert long == [], "split these: " + "; ".join(long)


def test_every_public_function_documents_its_args_and_what_it_returns():
    """The Python API (`lm_eval_contrans.__all__`) reads like lm-eval's registry: Args and Returns (or Yields)
    on every function, a docstring on every class."""
    import inspect

    import lm_eval_contrans

    undocumented = []
    for name in lm_eval_contrans._LAZY:
        public = getattr(lm_eval_contrans, name)
        doc = inspect.getdoc(public) or ""
        if inspect.isclass(public):
            missing = [] if doc else ["a docstring"]
        else:
            missing = [section for section, alternatives in (("Args", ("Args:",)), ("Returns", ("Returns:", "Yields:")))
                       if not any(alternative in doc for alternative in alternatives)]
        if missing:
            undocumented.append(f"{name} lacks {', '.join(missing)}")
    assert undocumented == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports when it is imported (function-level imports are lazy: left out)."""
    imported = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    return imported & modules


def test_no_module_imports_one_that_imports_it_back():
    """Each module builds on the ones below it (a package's `__init__` re-exporting its submodules is above them):
    a cycle would make the import order decide which names exist."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _top_level_imports(path, set(paths)) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def cycle_from(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return stack[stack.index(name):] + [name]
        if name in done:
            return None
        for imported in sorted(graph[name]):
            if found := cycle_from(imported, [*stack, name]):
                return found
        done.add(name)
        return None

    cycles = [" -> ".join(found) for name in sorted(graph) if (found := cycle_from(name, []))]
    assert cycles == [], cycles[0] if cycles else ""
