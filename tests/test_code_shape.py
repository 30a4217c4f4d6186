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
