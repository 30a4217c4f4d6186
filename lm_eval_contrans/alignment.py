"""Reformulate: a linear map from source-layer states to target-layer states.

Fitted on paired states of the same anchor texts in both models. `ridge=0` is the reference
recipe (ordinary least squares, no bias). `ridge>0` adds an L2 penalty
`ridge * mean(diag(X^T X))`, i.e. relative to the typical squared state norm, so the same value
means the same across models. Quality is reported as held-out R^2: fit on 80 % of the anchors,
score on the other 20 % (a fixed, seeded split), then refit on all anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lm_eval_contrans.errors import ConTransError

HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class LinearMap:
    weight: torch.Tensor  # [source_dim, target_dim]; transplanted = source_vector @ weight
    heldout_r2: float
    method: str  # "lstsq" or "ridge"
    ridge: float

    def __call__(self, source_states: torch.Tensor) -> torch.Tensor:
        return (source_states.double() @ self.weight.double()).to(source_states.dtype)


def _solve(source: torch.Tensor, target: torch.Tensor, ridge: float) -> torch.Tensor:
    if ridge == 0:
        return torch.linalg.lstsq(source, target, driver="gelsd").solution
    gram = source.T @ source
    penalty = ridge * gram.diagonal().mean()
    gram.diagonal().add_(penalty)
    return torch.linalg.solve(gram, source.T @ target)


def r_squared(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """1 - SS_res / SS_tot, pooled over all dimensions (SS_tot around the per-dimension mean)."""
    residual = ((actual - predicted) ** 2).sum()
    total = ((actual - actual.mean(0, keepdim=True)) ** 2).sum()
    return float(1.0 - residual / total)


def check_ridge(ridge) -> float:
    try:
        value = float(ridge)
    except (TypeError, ValueError):
        raise ConTransError("ridge", f"expected a number, got {ridge!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ConTransError("ridge", f"must be a finite number >= 0, got {ridge!r}")
    return value


def check_anchor_count(count: int, source_dim: int, ridge: float) -> None:
    """Least squares needs an over-determined fit: at least `source_dim` anchors in the 80 % split."""
    train = count - max(1, round(count * HOLDOUT_FRACTION))
    if ridge == 0 and train < source_dim:
        needed = math.ceil(source_dim / (1 - HOLDOUT_FRACTION))
        raise ConTransError(
            "anchors",
            f"{count} anchor texts are too few for a least-squares map from a source with hidden "
            f"size {source_dim}: the fit is under-determined (the 80 % training split must hold at "
            f"least {source_dim} texts, so give at least {needed} anchors). Use more anchors, or "
            f"set ridge (e.g. ridge=0.01) to regularise the fit.",
        )


def fit_linear_map(
    source_states: torch.Tensor,
    target_states: torch.Tensor,
    *,
    ridge: float = 0.0,
    seed: int = 0,
) -> LinearMap:
    """Fit W with source_states @ W ~= target_states; report held-out R^2."""
    if source_states.shape[0] != target_states.shape[0]:
        raise ValueError("source and target states must pair the same anchors")
    ridge = check_ridge(ridge)
    count, source_dim = source_states.shape
    check_anchor_count(count, source_dim, ridge)
    holdout = max(1, round(count * HOLDOUT_FRACTION))
    train = count - holdout
    x, y = source_states.double(), target_states.double()
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    train_index, test_index = permutation[:train], permutation[train:]
    trial = _solve(x[train_index], y[train_index], ridge)
    heldout_r2 = r_squared(x[test_index] @ trial, y[test_index])
    weight = _solve(x, y, ridge).float()
    return LinearMap(weight=weight, heldout_r2=heldout_r2, method="ridge" if ridge else "lstsq", ridge=float(ridge))
