"""The map methods (`map=`, `--map`): one entry of `MAP_METHODS` each, read by everything that names a method.

An entry holds the method's fit, what a ridge value makes of it, whether it needs an over-determined fit, its
line of `--map` help, and the recipe fields its fit is given (with its name, they key a fitted map). The CLI's
choices and help, `Recipe`'s check (and through it `TransplantArgs`' `map=`), `fit_linear_map` and the fit's
key all read the table: a new method is one entry plus its fit (the contract: `reformulate.FitRows`).

Nothing here imports torch, so the command line lists the methods without it: a built-in fit is named by its
function in `reformulate`, imported when a fit runs.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

from lm_eval_contrans.errors import ConTransError


@dataclass(frozen=True)
class MapMethod:
    """One way to fit the map between residual spaces: all that the rest of the package knows of it."""

    name: str
    # (rows: reformulate.FitRows, part: "train" | "all", ridge: float, center: bool) -> float64 (W, source mean,
    # target mean), with target ≈ (source - source mean) @ W + target mean; a str names a function in reformulate
    fit: Callable | str
    help: str  # its line in `--map`'s help
    with_ridge: str | None = None  # the method a ridge value (> 0 or auto) makes it; None: a ridge is refused
    overdetermined: bool = False  # needs more training rows than source dimensions (checked before models load)
    key_fields: tuple[str, ...] = ("ridge", "center")  # the Recipe fields its fit is given: with its name, its key

    def fitter(self) -> Callable:
        """The fit function (a built-in one imported from alignment now)."""
        if isinstance(self.fit, str):
            return getattr(importlib.import_module("lm_eval_contrans.reformulate"), self.fit)
        return self.fit

    def options(self, recipe) -> dict:
        """The fields of `recipe` (a pipeline Recipe) that its fit reads, by name: what it is given and keyed on."""
        return {name: getattr(recipe, name) for name in self.key_fields}


MAP_METHODS: dict[str, MapMethod] = {method.name: method for method in (
    MapMethod("lstsq", "fit_least_squares", "least squares (the paper's)", with_ridge="ridge", overdetermined=True),
    MapMethod("ridge", "fit_ridge", "least squares with a relative L2 penalty (--ridge, or auto)", with_ridge="ridge"),
    MapMethod("procrustes", "fit_procrustes", "the closest orthogonal map between the whitened states"),
)}


def check_map_method(method: str) -> str:
    if method not in MAP_METHODS:
        raise ConTransError("map", f"expected one of {', '.join(MAP_METHODS)}, got {method!r}")
    return method


def check_ridge(ridge) -> float | str:
    if ridge == "auto":
        return "auto"
    try:
        value = float(ridge)
    except (TypeError, ValueError):
        raise ConTransError("ridge", f"expected a number or 'auto', got {ridge!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ConTransError("ridge", f"must be a finite number >= 0 or 'auto', got {ridge!r}")
    return value


def settled_method(method: str, ridge: float | str) -> tuple[str, float | str]:
    """(method, ridge), checked: a ridge value makes a method its `with_ridge` (lstsq becomes ridge), or is
    refused by a method that takes none."""
    method, ridge = check_map_method(method), check_ridge(ridge)
    if ridge not in (0, 0.0):
        if MAP_METHODS[method].with_ridge is None:
            takes = " or ".join(f"map={name}" for name, entry in MAP_METHODS.items() if entry.with_ridge)
            raise ConTransError("ridge", f"applies to {takes}, not to map={method}")
        method = MAP_METHODS[method].with_ridge
    return method, ridge


def map_help() -> str:
    """`--map`'s help: each method and its line."""
    return "; ".join(f"{name}: {method.help}" for name, method in MAP_METHODS.items())
