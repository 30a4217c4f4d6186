"""Reformulate: a linear map from source-layer states to target-layer states.

Fitted on paired states of the same anchor texts in both models (one row per anchor text, or one
per pair of tokens that end at the same character: see `anchors.matched_token_pairs`).

The methods (`map=`, `--map`) are the entries of `map_methods.MAP_METHODS`; their fits are here (`fit_*`),
each reading the paired rows of one fit through a `FitRows`.

`center=True` fits on states minus their anchor means. A concept vector is a *difference* of
states, so the map must carry deviations, not the large shared offset of every state (Gemma's
residual stream has a few huge constant dimensions that a no-bias fit would otherwise spend itself on).

Quality is held-out R^2: fit on the anchor texts of a seeded 80 % split, score on the other 20 %
(rows of a held-out text are all held out), then refit on all anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.map_methods import MAP_METHODS, settled_method

HOLDOUT_FRACTION = 0.2
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


Part = Literal["train", "all"]  # the 80 % training split (scored on the rest), or every row (the final map)
Solution = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # float64 (W, source mean, target mean)


@dataclass
class FitRows:
    """The paired rows of one fit and its held-out split, as a method's fit (`MapMethod.fit`) reads them: the rows
    of a part, or their sums, computed once and shared by every solve on them (the final fit, each ridge of the
    grid). A fit returns float64 (W, source mean, target mean) from the part's rows alone; the ridge it is given
    is 0 unless its method takes one (`MapMethod.with_ridge`)."""

    source: torch.Tensor
    target: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor
    _sums: dict = field(default_factory=dict, repr=False)

    def rows(self, part: Part) -> torch.Tensor:
        """The row indices of a part."""
        return self.train if part == "train" else torch.arange(self.source.shape[0])

    def moments(self, part: Part, with_target_target: bool = False) -> _Moments:
        """The float64 sums over a part's rows. All rows' sums are the training sums plus the held-out ones:
        one pass over the states."""
        key = (part, with_target_target)
        if key not in self._sums:
            if part == "train":
                self._sums[key] = _moments(self.source, self.target, self.train, with_target_target)
            else:
                self._sums[key] = _sum_moments(self.moments("train", with_target_target),
                                               _moments(self.source, self.target, self.test, with_target_target))
        return self._sums[key]


def _centred(m: _Moments, center: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source mean, target mean, XᵀX, XᵀY), the products about the means when centred (zero means when not)."""
    source_mean = m.source_sum / m.count if center else torch.zeros_like(m.source_sum)
    target_mean = m.target_sum / m.count if center else torch.zeros_like(m.target_sum)
    return (source_mean, target_mean, m.source_source - m.count * torch.outer(source_mean, source_mean),
            m.source_target - m.count * torch.outer(source_mean, target_mean))


def fit_ridge(rows: FitRows, part: Part, ridge: float, center: bool) -> Solution:
    """Least squares from the sums, with an L2 penalty `ridge * mean(diag(XᵀX))`: relative to the typical squared
    state norm, so the same value means the same across models."""
    source_mean, target_mean, gram, source_target = _centred(rows.moments(part), center)
    gram.diagonal().add_(max(ridge, 1e-9) * gram.diagonal().mean())  # plain lstsq: a vanishing ridge for stability
    return torch.linalg.solve(gram, source_target), source_mean, target_mean


def fit_least_squares(rows: FitRows, part: Part, ridge: float, center: bool) -> Solution:
    """Plain least squares: the SVD solver on the rows themselves for near-square problems (under 4 rows a source
    dimension), else the normal equations."""
    count, source_dim = rows.source.shape
    if count < 4 * source_dim:
        x, y = rows.source[rows.rows(part)].double(), rows.target[rows.rows(part)].double()
        source_mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=torch.float64)
        target_mean = y.mean(0) if center else torch.zeros(y.shape[1], dtype=torch.float64)
        return torch.linalg.lstsq(x - source_mean, y - target_mean, driver="gelsd").solution, source_mean, target_mean
    return fit_ridge(rows, part, ridge, center)


def fit_procrustes(rows: FitRows, part: Part, ridge: float, center: bool) -> Solution:
    """Whiten both sides, then the closest orthogonal map between the whitened states (coloured back to the target)."""
    m = rows.moments(part, with_target_target=True)
    source_mean, target_mean, source_source, source_target = _centred(m, center)
    target_target = m.target_target - m.count * torch.outer(target_mean, target_mean)
    source_whitener, _ = _whitener(source_source / m.count)
    target_whitener, target_colourer = _whitener(target_target / m.count)
    u, _, vt = torch.linalg.svd(source_whitener @ (source_target / m.count) @ target_whitener, full_matrices=False)
    return source_whitener @ (u @ vt) @ target_colourer, source_mean, target_mean


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


def check_anchor_count(count: int, source_dim: int, ridge: float | str, method: str = "lstsq") -> None:
    """An over-determined method (plain least squares) needs at least `source_dim` rows in the 80 % split."""
    train = count - max(1, round(count * HOLDOUT_FRACTION))
    if MAP_METHODS[method].overdetermined and ridge in (0, 0.0) and train < source_dim:
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
        method: a name in MAP_METHODS ("lstsq", "ridge", "procrustes").
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
    rows = FitRows(source_states, target_states, *heldout_split(groups, seed))
    fit = MAP_METHODS[method].fitter()

    def heldout(penalty: float) -> float:
        return _heldout_r2(source_states, target_states, rows.test, *fit(rows, "train", penalty, center))

    if ridge == "auto":
        scores = {value: heldout(value) for value in RIDGE_GRID}
        ridge = max(scores, key=scores.get)
        heldout_r2 = scores[ridge]
    else:
        heldout_r2 = heldout(float(ridge))
    weight, source_mean, target_mean = fit(rows, "all", float(ridge), center)
    weight = weight.float()
    return LinearMap(weight=weight, source_mean=source_mean.float(), target_mean=target_mean.float(),
                     heldout_r2=heldout_r2, method=method, ridge=float(ridge), center=bool(center))
