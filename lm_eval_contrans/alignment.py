"""Reformulate: a linear map from source-layer states to target-layer states.

Fitted on paired states of the same anchor texts in both models (one row per anchor text, or one
per pair of tokens that end at the same character: see `anchors.matched_token_pairs`).

Methods (`map=`):
- "lstsq": least squares. With `center=False` on last-token states this is the reference recipe.
- "ridge": least squares with an L2 penalty `ridge * mean(diag(X^T X))`, i.e. relative to the
  typical squared state norm, so the same value means the same across models; `ridge="auto"` picks
  the value with the best held-out R^2 from RIDGE_GRID.
- "procrustes": whiten both sides, then the closest orthogonal map between the whitened states.

`center=True` fits on states minus their anchor means. A concept vector is a *difference* of
states, so the map must carry deviations, not the large shared offset of every state (Gemma's
residual stream has a few huge constant dimensions that a no-bias fit would otherwise spend itself on).

Quality is held-out R^2: fit on the anchor texts of a seeded 80 % split, score on the other 20 %
(rows of a held-out text are all held out), then refit on all anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lm_eval_contrans.errors import ConTransError

HOLDOUT_FRACTION = 0.2
MAP_METHODS = ("lstsq", "ridge", "procrustes")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class LinearMap:
    weight: torch.Tensor  # [source_dim, target_dim]; transplanted = source_vector @ weight
    source_mean: torch.Tensor  # zeros when not centred
    target_mean: torch.Tensor
    heldout_r2: float
    method: str
    ridge: float
    center: bool

    def __call__(self, source_states: torch.Tensor) -> torch.Tensor:
        """Predicted target states (an affine map when centred)."""
        mapped = (source_states.double() - self.source_mean.double()) @ self.weight.double() + self.target_mean.double()
        return mapped.to(source_states.dtype)

    def transplant(self, source_vector: torch.Tensor) -> torch.Tensor:
        """A difference of source states -> a difference of target states (the means cancel)."""
        return (source_vector.double() @ self.weight.double()).to(source_vector.dtype)


CHUNK_ROWS = 8192  # rows converted to float64 at a time: dense anchors can hold 10^5 rows


@dataclass
class _Moments:
    """Sums over a set of rows, accumulated in float64 a chunk at a time (no float64 copy of all rows)."""

    count: int
    source_sum: torch.Tensor
    target_sum: torch.Tensor
    source_source: torch.Tensor
    source_target: torch.Tensor
    target_target: torch.Tensor | None


def _moments(source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, with_target_target: bool) -> _Moments:
    source_dim, target_dim = source.shape[1], target.shape[1]
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    moments = _Moments(len(rows), zeros(source_dim), zeros(target_dim), zeros(source_dim, source_dim),
                       zeros(source_dim, target_dim), zeros(target_dim, target_dim) if with_target_target else None)
    for start in range(0, len(rows), CHUNK_ROWS):
        index = rows[start : start + CHUNK_ROWS]
        x, y = source[index].double(), target[index].double()
        moments.source_sum += x.sum(0)
        moments.target_sum += y.sum(0)
        moments.source_source += x.T @ x
        moments.source_target += x.T @ y
        if with_target_target:
            moments.target_target += y.T @ y
    return moments


def _sum_moments(first: _Moments, second: _Moments) -> _Moments:
    target_target = None if first.target_target is None else first.target_target + second.target_target
    return _Moments(first.count + second.count, first.source_sum + second.source_sum, first.target_sum + second.target_sum,
                    first.source_source + second.source_source, first.source_target + second.source_target,
                    target_target)


def _whitener(covariance: torch.Tensor, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp(min=floor * float(values.max()))
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T, vectors @ torch.diag(values.sqrt()) @ vectors.T


def _solve_moments(m: _Moments, method: str, ridge: float, center: bool):
    """(W, source mean, target mean) from the sums: the normal equations, or Procrustes after whitening."""
    source_mean = m.source_sum / m.count if center else torch.zeros_like(m.source_sum)
    target_mean = m.target_sum / m.count if center else torch.zeros_like(m.target_sum)
    source_source = m.source_source - m.count * torch.outer(source_mean, source_mean)
    source_target = m.source_target - m.count * torch.outer(source_mean, target_mean)
    if method == "procrustes":
        target_target = m.target_target - m.count * torch.outer(target_mean, target_mean)
        source_whitener, _ = _whitener(source_source / m.count)
        target_whitener, target_colourer = _whitener(target_target / m.count)
        u, _, vt = torch.linalg.svd(source_whitener @ (source_target / m.count) @ target_whitener, full_matrices=False)
        return source_whitener @ (u @ vt) @ target_colourer, source_mean, target_mean
    gram = source_source.clone()
    gram.diagonal().add_(max(ridge, 1e-9) * gram.diagonal().mean())  # plain lstsq: a vanishing ridge for stability
    return torch.linalg.solve(gram, source_target), source_mean, target_mean


def _solve_rows(source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, center: bool):
    """Least squares on the rows themselves (the SVD solver), for near-square problems."""
    x, y = source[rows].double(), target[rows].double()
    source_mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=torch.float64)
    target_mean = y.mean(0) if center else torch.zeros(y.shape[1], dtype=torch.float64)
    weight = torch.linalg.lstsq(x - source_mean, y - target_mean, driver="gelsd").solution
    return weight, source_mean, target_mean


def _heldout_r2(source, target, rows, weight, source_mean, target_mean) -> float:
    residual = total = 0.0
    target_rows_mean = sum(target[rows[s : s + CHUNK_ROWS]].double().sum(0) for s in range(0, len(rows), CHUNK_ROWS)) / len(rows)
    for start in range(0, len(rows), CHUNK_ROWS):
        index = rows[start : start + CHUNK_ROWS]
        x, y = source[index].double(), target[index].double()
        residual += float((((x - source_mean) @ weight + target_mean - y) ** 2).sum())
        total += float(((y - target_rows_mean) ** 2).sum())
    return 1.0 - residual / total


def r_squared(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """1 - SS_res / SS_tot, pooled over all dimensions (SS_tot around the per-dimension mean)."""
    residual = ((actual - predicted) ** 2).sum()
    total = ((actual - actual.mean(0, keepdim=True)) ** 2).sum()
    return float(1.0 - residual / total)


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


def check_map_method(method: str) -> str:
    if method not in MAP_METHODS:
        raise ConTransError("map", f"expected one of {', '.join(MAP_METHODS)}, got {method!r}")
    return method


def check_anchor_count(count: int, source_dim: int, ridge: float | str, method: str = "lstsq") -> None:
    """Plain least squares needs an over-determined fit: at least `source_dim` rows in the 80 % split."""
    train = count - max(1, round(count * HOLDOUT_FRACTION))
    if method == "lstsq" and ridge in (0, 0.0) and train < source_dim:
        needed = math.ceil(source_dim / (1 - HOLDOUT_FRACTION))
        raise ConTransError(
            "anchors",
            f"{count} anchor rows are too few for a least-squares map from a source with hidden "
            f"size {source_dim}: the fit is under-determined (the 80 % training split must hold at "
            f"least {source_dim} rows, so give at least {needed} anchors, or use anchor_tokens=dense, "
            f"which pairs every token). Or set ridge (e.g. ridge=0.01) to regularise the fit.",
        )


def heldout_split(groups: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, test): a seeded 20 % of the groups (anchor texts) is held out whole."""
    unique = torch.unique(groups)
    permutation = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    held_out = permutation[len(unique) - max(1, round(len(unique) * HOLDOUT_FRACTION)):]
    test_mask = torch.isin(groups, held_out)
    return torch.nonzero(~test_mask).flatten(), torch.nonzero(test_mask).flatten()


def settled_method(method: str, ridge: float | str) -> tuple[str, float | str]:
    """(method, ridge), checked: a ridge value given with the default method means a ridge fit."""
    method, ridge = check_map_method(method), check_ridge(ridge)
    if ridge not in (0, 0.0):
        if method == "procrustes":
            raise ConTransError("ridge", "applies to map=lstsq or map=ridge, not to map=procrustes")
        method = "ridge"
    return method, ridge


def fit_linear_map(
    source_states: torch.Tensor,
    target_states: torch.Tensor,
    *,
    method: str = "lstsq",
    ridge: float | str = 0.0,
    center: bool = False,
    groups: torch.Tensor | None = None,
    seed: int = 0,
) -> LinearMap:
    """Reformulate: fit W with (source - mean) @ W ~= target - mean, and score it on held-out rows.

    Args:
        source_states, target_states: paired rows, [anchors, source width] and [anchors, target width].
        method: "lstsq", "ridge" or "procrustes".
        ridge: > 0 adds `ridge × mean(diag XᵀX)` to the normal equations; "auto" picks it on held-out R².
        center: fit on mean-centred states (the means are kept in the map).
        groups: each row's anchor text (None: a text a row); held-out rows are whole texts, so tokens
            of a text seen in training do not inflate the score. seed: the held-out split's seed.

    Returns:
        A LinearMap: `weight`, the means, `heldout_r2`, and `transplant(vectors)`.

    Raises:
        ConTransError: a method or ridge not as above, or too few rows. ValueError: unpaired rows.
    """
    if source_states.shape[0] != target_states.shape[0]:
        raise ValueError("source and target states must pair the same anchors")
    method, ridge = settled_method(method, ridge)
    count, source_dim = source_states.shape
    groups = torch.arange(count) if groups is None else groups
    check_anchor_count(count, source_dim, ridge, method)
    train, test = heldout_split(groups, seed)
    near_square = method == "lstsq" and ridge in (0, 0.0) and count < 4 * source_dim

    if near_square:
        def fit(part: str, penalty: float):
            return _solve_rows(source_states, target_states, train if part == "train" else torch.arange(count), center)
    else:
        # one pass over the states: the sums over all rows are the training sums plus the held-out
        # ones, and every ridge value of the grid is solved from the same training sums
        sums = {"train": _moments(source_states, target_states, train, method == "procrustes")}
        sums["all"] = _sum_moments(sums["train"], _moments(source_states, target_states, test, method == "procrustes"))

        def fit(part: str, penalty: float):
            return _solve_moments(sums[part], method, penalty, center)

    def heldout(penalty: float) -> float:
        return _heldout_r2(source_states, target_states, test, *fit("train", penalty))

    if ridge == "auto":
        scores = {value: heldout(value) for value in RIDGE_GRID}
        ridge = max(scores, key=scores.get)
        heldout_r2 = scores[ridge]
    else:
        heldout_r2 = heldout(float(ridge))
    weight, source_mean, target_mean = fit("all", float(ridge))
    weight = weight.float()
    return LinearMap(weight=weight, source_mean=source_mean.float(), target_mean=target_mean.float(),
                     heldout_r2=heldout_r2, method=method, ridge=float(ridge), center=bool(center))
