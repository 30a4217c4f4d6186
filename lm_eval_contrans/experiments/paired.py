"""Paired statistics of a comparison: every row scores the same documents, so a row is compared with the base target
and with the random band per document, not through lm-eval's unpaired standard errors.

- `paired_test`: the mean per-document difference, a 95 % interval from a seeded paired bootstrap over documents and
  a two-sided p-value from a paired permutation (sign-flip) test;
- `Band`: the random directions at one alpha (mean, spread, where a row falls in it);
- `closed_share`: the share of the gap between the base target and an instruction-tuned row that a transplant closes,
  with its interval from the same paired bootstrap;
- `analyse`: every such test of a list of rows (`report.Row`), with a note where a test cannot be made (no
  per-document scores, rows scored on different documents), and `verdict`, a line per concept and column written
  from those numbers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 10_000  # the interval's ends move by about 3 % of a standard error between seeds (see `decimals`)
LEVEL = 0.95
PERCENTILE_BAND_FROM = 10  # from this many random directions the spread is the 10-90 % range, not min-max
_CHUNK = 2_000_000  # resampled document indices held at once
BAND_MEAN = "the random band's mean"
# The rows a transplant is measured against as aligned models: in ConTrans the source is by definition the small
# instruction-tuned model the concept comes from; `--instruct` adds the target's own instruction-tuned sibling.
INSTRUCTION_TUNED = {"source": "instruction-tuned source", "instruct": "instruction-tuned target"}


@dataclass(frozen=True)
class PairedTest:
    """One row against a reference on the same documents: mean difference, its interval and p-value."""

    difference: float  # mean over documents of (row - reference)
    low: float
    high: float
    p_value: float
    documents: int
    stderr: float = 0.0  # of the mean difference (sd / sqrt(n)): sets the digits printed

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0 and the permutation test agrees (with 1 document the interval is a point)."""
        return (self.low > 0 or self.high < 0) and self.p_value < 1 - LEVEL


def bootstrap_interval(differences: np.ndarray | list[float], *, resamples: int = RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of paired differences, resampling documents with replacement (seeded).

    Args:
        differences: one paired difference per document.
        resamples: bootstrap resamples.
        seed: the generator's seed: the same inputs give the same interval.
        level: the interval's coverage.

    Returns:
        (low, high).
    """
    values = np.asarray(differences, dtype=np.float64)
    means = np.empty(resamples)
    for start, indices in resampled(len(values), resamples, seed):
        means[start:start + len(indices)] = values[indices].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def resampled(documents: int, resamples: int = RESAMPLES, seed: int = 0):
    """The bootstrap's resamples of document indices, in chunks: (first resample's number, indices of shape
    (resamples in the chunk, documents)). A seed gives the same resamples to every statistic of one set of documents,
    so a ratio's resamples are the very ones its denominator's interval was read from."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // documents)
    for start in range(0, resamples, step):
        yield start, rng.integers(0, documents, size=(min(step, resamples - start), documents))


def sign_flip_p_value(differences: np.ndarray | list[float], *, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired permutation test: with no effect, each document's difference is as likely
    negated. Every sign pattern where there are few documents (2**n <= resamples), else seeded random ones.

    Args:
        differences: one paired difference per document.
        resamples: random sign patterns when not exact.
        seed: the generator's seed.

    Returns:
        The share of sign patterns whose mean is at least as far from 0 as the observed one.
    """
    values = np.asarray(differences, dtype=np.float64)
    observed = abs(values.mean()) * (1 - 1e-9) - 1e-12  # float noise of an equal mean counts as equal
    if 2 ** len(values) <= resamples:
        signs = ((np.arange(2 ** len(values))[:, None] >> np.arange(len(values))) & 1) * 2.0 - 1
        return float(np.mean(np.abs(signs @ values) / len(values) >= observed))
    rng = np.random.default_rng(seed)
    hits, step = 0, max(1, _CHUNK // len(values))
    for start in range(0, resamples, step):
        signs = rng.integers(0, 2, size=(min(step, resamples - start), len(values))) * 2.0 - 1
        hits += int(np.sum(np.abs(signs @ values) / len(values) >= observed))
    return (1 + hits) / (1 + resamples)  # the observed pattern counts as one of them


def paired_test(scores: list[float], reference: list[float], *, seed: int = 0) -> PairedTest:
    """`scores` against `reference`, document by document (both in the same document order).

    Args:
        scores: the row's per-document scores.
        reference: the reference's (the base target, or the band's per-document mean).
        seed: seed of the bootstrap and of the permutation test.

    Returns:
        The paired test.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(scores) != len(reference) or not scores:
        raise ValueError(f"paired scores need the same documents: {len(scores)} against {len(reference)}")
    differences = np.asarray(scores, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    low, high = bootstrap_interval(differences, seed=seed)
    stderr = float(differences.std(ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else 0.0
    return PairedTest(float(differences.mean()), low, high, sign_flip_p_value(differences, seed=seed), len(differences),
                      stderr)


@dataclass(frozen=True)
class Band:
    """The scores of K random directions at one alpha on one column."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def spread(self) -> tuple[float, float]:
        """(low, high): min-max, or the 10-90 % range from `PERCENTILE_BAND_FROM` directions on."""
        if len(self.values) >= PERCENTILE_BAND_FROM:
            low, high = np.percentile(self.values, [10, 90])
            return float(low), float(high)
        return float(min(self.values)), float(max(self.values))

    @property
    def spread_name(self) -> str:
        return "10–90 %" if len(self.values) >= PERCENTILE_BAND_FROM else "min–max"

    def place(self, value: float, noun: str = "") -> str:
        """Where `value` falls among the directions: "above 8 of 8", "above 3 of 8, level with 2" (with `noun` after
        the count: "above 8 of 8 random directions")."""
        above = sum(band < value for band in self.values)
        level = sum(band == value for band in self.values)
        count = f"all {above}" if above == len(self.values) > 1 and noun else f"{above} of {len(self.values)}"
        return f"above {count}{noun}" + (f", level with {level}" if level else "")


def decimals(test: PairedTest) -> int:
    """Digits worth printing: down to the standard error's leading digit. The interval's ends move between bootstrap
    seeds by about 3 % of a standard error at `RESAMPLES`, so two seeds print the same digits or differ by one in the
    last.

    Args:
        test: the paired test.

    Returns:
        0 to 6 decimals (3 where the difference is the same on every document).
    """
    if not test.stderr > 0 or not math.isfinite(test.stderr):
        return 3
    return min(6, max(0, -math.floor(math.log10(test.stderr))))


def format_test(test: PairedTest, with_p: bool = False) -> str:
    """'+9.52 (95 % CI 8.82 to 10.22)', with ', p 0.0001' when asked.

    Args:
        test: the paired test.
        with_p: add its p-value.

    Returns:
        The text.
    """
    places = decimals(test)
    text = f"{test.difference:+.{places}f} (95 % CI {test.low:.{places}f} to {test.high:.{places}f}"
    return text + (f", p {format_p(test.p_value)})" if with_p else ")")


def format_p(p_value: float) -> str:
    """A p-value with two significant digits ('0.0001', '0.43')."""
    return f"{p_value:.2g}" if p_value < 0.1 else f"{p_value:.2f}"


@dataclass(frozen=True)
class RowTests:
    """One row's paired tests on one column (task, metric)."""

    row: str
    kind: str
    alpha: float | tuple | None
    value: float | None
    vs_base: PairedTest | None = None
    vs_band: PairedTest | None = None
    band: Band | None = None


@dataclass
class Analysis:
    """Every paired test of a list of rows: `tests[(task, metric)]` in row order, `bands[(task, metric)][alpha]`,
    `notes[(task, metric)]`: why a column has no paired test, `gaps[(task, metric)]`: the `GapClosed` of each
    transplant row and instruction-tuned row."""

    tests: dict = field(default_factory=dict)
    bands: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    gaps: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GapClosed:
    """How much of the gap between the base target and an instruction-tuned row (`reference`) a transplant row closes
    on one column; `share` is None where `note` says why there is no ratio."""

    row: str
    alpha: float | tuple | None
    reference: str
    reference_kind: str  # a key of INSTRUCTION_TUNED
    gap: PairedTest | None = None  # the reference against the base target
    share: tuple[float, float, float] | None = None  # (closed, low, high): fractions of the gap
    note: str | None = None


def alpha_key(alpha: float | list | tuple | None) -> float | tuple | None:
    """A row's alpha as a dictionary key (several concepts' alphas, read back from JSON as a list, as a tuple)."""
    return tuple(alpha) if isinstance(alpha, (list, tuple)) else alpha


def alpha_text(alpha: float | tuple | None) -> str:
    """'1', '1.5+2' (one alpha per concept)."""
    return "+".join(f"{a:g}" for a in alpha) if isinstance(alpha, tuple) else f"{alpha:g}"


def documents_of(row, task: str, metric: str) -> list[float] | None:
    """The row's per-document scores of `metric` on `task` (by doc_id), None where it has none."""
    scores = (row.per_document or {}).get(task, {}).get(metric)
    return list(scores) if scores else None


def bands_of(rows: list, task: str, metric: str) -> dict:
    """{alpha: Band} of the random rows (kind "random") that have a score on the column."""
    from lm_eval_contrans.experiments.report import score

    values: dict = {}
    for row in rows:
        value = score(row, task, metric)[0] if row.kind == "random" and row.alpha is not None else None
        if value is not None:
            values.setdefault(alpha_key(row.alpha), []).append(float(value))
    return {alpha: Band(tuple(scores)) for alpha, scores in values.items()}


def band_documents(rows: list, task: str, metric: str, alpha) -> list[float] | None:
    """Per document, the mean over the band's rows at `alpha` of their scores; None unless every band row has them
    on the same number of documents."""
    scored = [documents_of(row, task, metric) for row in rows if row.kind == "random" and alpha_key(row.alpha) == alpha]
    if not scored or any(scores is None or len(scores) != len(scored[0]) for scores in scored):
        return None
    return np.mean(np.asarray(scored, dtype=np.float64), axis=0).tolist()


def unpairable(rows: list, base, task: str, metric: str) -> str | None:
    """Why the column (task, metric) gets no paired test, or None where it can have them.

    Args:
        rows: the table's rows.
        base: the base target's row (None: there is none).
        task: the column's task.
        metric: its metric.

    Returns:
        A sentence naming the task, or None.
    """
    if base is None:
        return f"{task}: no base target row to pair with: no paired test"
    if documents_of(base, task, metric) is None:
        recorded = any(task in (row.per_document or {}) for row in rows)
        why = (f"lm-eval gives {metric} for the whole task, not per document" if recorded else
               "these results hold no per-document scores (lm-eval output, or rows saved before paired tests)")
        return f"{task} ({metric}): {why}: no paired test"
    scored = [row for row in rows if documents_of(row, task, metric) is not None]
    sizes = {len(documents_of(row, task, metric)) for row in scored}
    hashes = {row.document_hashes.get(task) for row in scored} - {None}
    if len(sizes) > 1 or len(hashes) > 1:
        counts = ", ".join(f"{len(documents_of(row, task, metric))} in {row.name}" for row in scored[:4])
        return (f"{task}: the rows were scored on different documents ({counts}{', ...' if len(scored) > 4 else ''}): "
                "no paired test; tabulate runs of one document set")
    return None


def tested_row(row, rows: list, base, bands: dict, task: str, metric: str, paired: bool) -> RowTests:
    """`row`'s tests on the column: against the base target, and against the random band's mean at its alpha."""
    from lm_eval_contrans.experiments.report import score

    alpha = alpha_key(row.alpha)
    band = bands.get(alpha) if alpha is not None else None
    scores = documents_of(row, task, metric) if paired else None
    if scores is None:
        return RowTests(row.name, row.kind, alpha, score(row, task, metric)[0], band=band)
    vs_base = paired_test(scores, documents_of(base, task, metric))
    band_scores = band_documents(rows, task, metric, alpha) if band is not None else None
    vs_band = paired_test(scores, band_scores) if band_scores is not None and len(band_scores) == len(scores) else None
    return RowTests(row.name, row.kind, alpha, score(row, task, metric)[0], vs_base, vs_band, band)


def closed_share(scores: list[float], reference: list[float], base: list[float], *,
                 seed: int = 0) -> tuple[PairedTest, tuple[float, float, float] | None]:
    """The share of the gap between `base` and `reference` that `scores` closes: mean(scores - base) /
    mean(reference - base), all three on the same documents in the same order.

    The rule: a gap is there to close only when its own paired test tells it from zero (`PairedTest.distinguishable`:
    its 95 % interval excludes 0 and the permutation p is below 0.05); otherwise the ratio divides by noise and no
    share is given. A gap told from zero but small is kept: its wide interval says how little it settles (no absolute
    threshold: metrics differ in scale). The share's interval is the percentile interval of the ratio over the bootstrap's resamples,
    documents drawn jointly for the three rows: the very resamples the gap's interval was read from, so at most
    2.5 % of them put the gap on the other side of 0 and the interval is finite.

    Args:
        scores: the transplant row's per-document scores.
        reference: the instruction-tuned row's.
        base: the base target's.
        seed: seed of the bootstrap and of the gap's permutation test.

    Returns:
        (the gap's paired test, (share, low, high) as fractions of the gap, or None: no gap to close).

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    gap = paired_test(reference, base, seed=seed)
    if len(scores) != len(base):
        raise ValueError(f"paired scores need the same documents: {len(scores)} against {len(base)}")
    if not gap.distinguishable:
        return gap, None
    base_scores = np.asarray(base, dtype=np.float64)
    closed = np.asarray(scores, dtype=np.float64) - base_scores
    gaps = np.asarray(reference, dtype=np.float64) - base_scores
    ratios = np.empty(RESAMPLES)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample whose gap is exactly 0 lies in a tail
        for start, indices in resampled(len(gaps), RESAMPLES, seed):
            ratios[start:start + len(indices)] = closed[indices].mean(axis=1) / gaps[indices].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    return gap, (float(closed.mean() / gaps.mean()), float(low), float(high))


def column_gaps(rows: list, base, task: str, metric: str) -> list[GapClosed]:
    """Each transplant row (kind "contrans") against each instruction-tuned row that has a score on the column
    (a column `unpairable` lets through: every per-document score is of the same documents).

    Args:
        rows: the table's rows.
        base: the base target's row.
        task: the column's task.
        metric: its metric.

    Returns:
        A `GapClosed` per (instruction-tuned row, transplant row), in row order.
    """
    from lm_eval_contrans.experiments.report import score

    def scored(kinds) -> list:
        return [row for row in rows if row.kind in kinds and score(row, task, metric)[0] is not None]

    gaps = []
    for reference in scored(INSTRUCTION_TUNED):
        for row in scored(("contrans",)):
            entry = GapClosed(row.name, alpha_key(row.alpha), reference.name, reference.kind)
            missing = [other.name for other in (row, reference) if documents_of(other, task, metric) is None]
            if missing:
                gaps.append(dataclasses.replace(entry, note=f"{' and '.join(missing)}: no per-document scores of "
                                                            f"{task} ({metric}): no gap closed"))
                continue
            gap, share = closed_share(documents_of(row, task, metric), documents_of(reference, task, metric),
                                      documents_of(base, task, metric))
            gaps.append(dataclasses.replace(entry, gap=gap, share=share, note=None if share else no_gap(reference.kind,
                                                                                                       gap)))
    return gaps


def no_gap(kind: str, gap: PairedTest) -> str:
    """'no gap to close: the instruction-tuned target is not distinguishable from base (+0.01 (95 % CI ...))'."""
    return f"no gap to close: the {INSTRUCTION_TUNED[kind]} {against('base', gap)}"


def format_share(share: tuple[float, float, float]) -> str:
    """'42 % (95 % CI 30 to 55 %)': to whole percents unless the interval is narrower than a few.

    Args:
        share: (closed, low, high) as fractions of the gap.

    Returns:
        The text.
    """
    closed, low, high = (100 * value for value in share)
    spread = (high - low) / 4  # about a standard error
    places = min(2, max(0, -math.floor(math.log10(spread)))) if spread > 1e-9 else 0  # float noise of a point: 0
    return f"{closed:.{places}f} % (95 % CI {low:.{places}f} to {high:.{places}f} %)"


def analyse(rows: list, columns: list[tuple[str, str]]) -> Analysis:
    """Every paired test of the table: each row other than the base target and the random rows, on each column,
    against the base target and against the random band at its alpha.

    Args:
        rows: `report.Row`s, the base target among them (kind "base"; the first one is paired with).
        columns: (task, metric) columns.

    Returns:
        The analysis.
    """
    analysis = Analysis()
    base = next((row for row in rows if row.kind == "base"), None)
    for task, metric in columns:
        column = (task, metric)
        analysis.bands[column] = bands_of(rows, task, metric)
        reason = unpairable(rows, base, task, metric)
        if reason:
            analysis.notes[column] = reason
        analysis.tests[column] = [tested_row(row, rows, base, analysis.bands[column], task, metric, reason is None)
                                  for row in rows if row is not base and row.kind != "random"]
        analysis.gaps[column] = [] if reason else column_gaps(rows, base, task, metric)
    return analysis


def against(name: str, test: PairedTest) -> str:
    """'beats base by +9.5 (95 % CI 8.8 to 10.2)', 'falls below ...', or 'is not distinguishable from ...'."""
    if test.distinguishable:
        return f"{'beats' if test.difference > 0 else 'falls below'} {name} by {format_test(test)}"
    return f"is not distinguishable from {name} ({format_test(test, with_p=True)})"


def placement(entry: RowTests) -> str:
    """'above all 8 random directions', 'above 3 of 8 random directions, level with 1'."""
    return entry.band.place(entry.value, " random direction" + ("s" if len(entry.band.values) > 1 else ""))


def chosen(entries: list[RowTests]) -> RowTests | None:
    """The transplant row a verdict is about: the one whose interval against the random band's mean lies highest, or,
    with no band, against the base target; None where no row has a paired test."""
    tested = [entry for entry in entries if entry.vs_base is not None]
    banded = [entry for entry in tested if entry.vs_band is not None and entry.value is not None]
    if banded:
        return max(banded, key=lambda entry: entry.vs_band.low)
    return max(tested, key=lambda entry: entry.vs_base.low) if tested else None


def closing(entry: RowTests, gaps: list[GapClosed]) -> str:
    """What the verdict's transplant row closes of each instruction-tuned row's gap: '; at α 1 it closes 42 % (95 % CI
    30 to 55 %) of the gap between base and the instruction-tuned source', or that there is no gap to close."""
    clauses = []
    for gap in (gap for gap in gaps if gap.row == entry.row and gap.gap is not None):
        label = INSTRUCTION_TUNED[gap.reference_kind]
        clauses.append(f"at α {alpha_text(entry.alpha)} it closes {format_share(gap.share)} of the gap between base "
                       f"and the {label}" if gap.share else f"the {label} is not distinguishable from base: no gap to close")
    return "".join(f"; {clause}" for clause in clauses)


def verdict(label: str, entries: list[RowTests]) -> str:
    """The verdict on one concept and column, from the transplant rows' paired tests (`entries`, one per alpha):
    the alpha that beats the random band's mean most surely, or why the transplant is not told from random.

    Args:
        label: what the line is about ("sentiment, contrans_sentiment (margin)").
        entries: the transplant rows' tests on the column.

    Returns:
        One line.
    """
    best = chosen(entries)
    if best is None:
        return f"{label}: no paired test"
    if best.vs_band is None or best.value is None:
        return f"{label}: the transplant at α {alpha_text(best.alpha)} {against('base', best.vs_base)}; no random band"
    at = f"α {alpha_text(best.alpha)}"
    if best.vs_band.distinguishable and best.vs_band.difference > 0:
        return (f"{label}: the transplant at {at} {against('base', best.vs_base)} and "
                f"{against(BAND_MEAN, best.vs_band)}; "
                f"{placement(best)}")
    low, high = best.band.spread
    spans = f"the band spans {low:.3f} to {high:.3f} ({best.band.spread_name}) at {at}"
    if best.vs_band.distinguishable:
        return f"{label}: below random: at {at} the transplant {against(BAND_MEAN, best.vs_band)} ({spans})"
    return f"{label}: not distinguishable from random ({spans}; the transplant {best.value:.3f}, {placement(best)})"


def verdicts(analysis: Analysis, concept: str | None = None) -> list[str]:
    """A verdict line per column on the transplant rows (kind "contrans"), or the note on why there is none; the
    verdict's row is followed by the share it closes of each instruction-tuned row's gap to base.

    Args:
        analysis: the table's paired tests.
        concept: the concept's name, to begin each line with.

    Returns:
        The lines, in column order.
    """
    lines = []
    for (task, metric), entries in analysis.tests.items():
        label = f"{concept + ', ' if concept else ''}{task} ({metric})"
        transplants = [entry for entry in entries if entry.kind == "contrans"]
        if not transplants:
            continue
        note = analysis.notes.get((task, metric))
        best = None if note else chosen(transplants)
        gaps = closing(best, analysis.gaps.get((task, metric), [])) if best else ""
        lines.append(f"{label}: no verdict ({note})" if note else verdict(label, transplants) + gaps)
    return lines
