"""Comparison tables and plots from lm-eval results: Markdown, CSV and one PNG per task.

A row is one evaluated model configuration: `{"name", "kind", "alpha", "diagnostics", "results",
"main_metrics"}` where `results` is lm-eval's per-task results mapping. Rows come from a grid folder
(`contrans compare`; the rows its `rows/index.json` lists) or from any lm-eval `--output_path` folder
(`results_*.json`), e.g. runs made on GPUs elsewhere. A task's main metric is the first metric of
its YAML's `metric_list`, as lm-eval recorded it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.paired import (INSTRUCTION_TUNED, RESAMPLES, Analysis, GapClosed, RowTests, alpha_key,
                                                 alpha_text, analyse, bands_of, format_p, format_share, format_test,
                                                 verdicts)
from lm_eval_contrans.paths import safe_name

# For results without their task's config (a group's aggregate, an old file): the first of these present.
FALLBACK_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mc2", "word_perplexity")
# What a reader of a paper calls each kind of row; the CSV's `kind` column keeps the short names for programs.
KIND_LABELS = {"base": "base", "contrans": "transplant", "random": "control: random direction",
               "own": "control: target's own vector", "prompt": "prompt baseline", **INSTRUCTION_TUNED}
BAND_LABEL = "control: random band"


@dataclass
class Row:
    name: str
    results: dict
    kind: str = "other"  # base | contrans | random | own | prompt | source | instruct | other
    alpha: float | None = None
    diagnostics: dict = field(default_factory=dict)
    main_metrics: dict = field(default_factory=dict)  # task -> the first metric of its YAML
    per_document: dict = field(default_factory=dict)  # task -> metric -> score of each document, by doc_id
    artifact: str | None = None  # the steering vector's file, relative to the grid folder
    document_hashes: dict = field(default_factory=dict)  # task -> digest of its documents: paired rows share it

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "alpha": self.alpha, "diagnostics": self.diagnostics,
                "results": self.results, "main_metrics": self.main_metrics, "per_document": self.per_document,
                "artifact": self.artifact, "document_hashes": self.document_hashes}

    def value(self, task: str, metric: str) -> float | None:
        """A metric's value in this row, None where the row lacks it."""
        value = self.results.get(task, {}).get(f"{metric},none")
        return value if isinstance(value, (int, float)) else None


def main_metrics_of(configs: dict) -> dict:
    """{task: first metric of its metric_list} from lm-eval's per-task configs."""
    metrics = {}
    for task, config in (configs or {}).items():
        listed = (config or {}).get("metric_list") or []
        if listed and isinstance(listed[0], dict) and listed[0].get("metric"):
            metrics[task] = str(listed[0]["metric"])
    return metrics


def main_metric(task: str, values: dict, declared: str | None = None) -> str | None:
    """The metric a table shows for a task: the one its YAML lists first, else a common one present."""
    for metric in ((declared,) if declared else ()) + FALLBACK_METRICS:
        if f"{metric},none" in values:
            return metric
    numeric = [key.split(",")[0] for key, value in values.items()
               if isinstance(value, (int, float)) and "_stderr" not in key and key != "alias"]
    return numeric[0] if numeric else None


def score(row: Row, task: str, metric: str | None = None) -> tuple[float | None, float | None, str | None]:
    """(value, stderr, metric name) of `metric`, or of the task's main metric when None."""
    values = row.results.get(task, {})
    metric = metric or main_metric(task, values, row.main_metrics.get(task))
    if metric is not None and f"{metric},none" not in values:
        return None, None, metric
    if metric is None:
        return None, None, None
    stderr = values.get(f"{metric}_stderr,none")
    return values[f"{metric},none"], stderr if isinstance(stderr, (int, float)) else None, metric


def tasks_of(rows: list[Row]) -> list[str]:
    return sorted({task for row in rows for task in row.results})


def _cell(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def columns_of(rows: list[Row], extra_metrics: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(task, metric) columns: each task's main metric, then any `extra_metrics` it reports."""
    columns = []
    for task in tasks_of(rows):
        main = next((score(row, task)[2] for row in rows if score(row, task)[2]), None)
        columns.append((task, main))
        for metric in extra_metrics:
            if metric != main and any(f"{metric},none" in row.results.get(task, {}) for row in rows):
                columns.append((task, metric))
    return columns


def markdown_table(rows: list[Row], extra_metrics: tuple[str, ...] = ()) -> str:
    """The main table: a line per row, except the random directions at one alpha, which are one band line (mean and
    spread) where there are several.

    Args:
        rows: the rows.
        extra_metrics: metrics shown beside each task's main metric.

    Returns:
        Markdown.
    """
    columns = columns_of(rows, extra_metrics)
    diagnostics = sorted({key for row in rows for key in row.diagnostics})
    kinds = any(row.kind in KIND_LABELS for row in rows)  # lm-eval output folders: rows of no known kind
    header = ["model", *(["kind"] if kinds else []), *(f"{task} ({metric})" for task, metric in columns), *diagnostics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = set()
    for row in rows:
        if band_size(rows, row) > 1:
            if alpha_key(row.alpha) not in shown:
                shown.add(alpha_key(row.alpha))
                lines.append(_band_line(rows, alpha_key(row.alpha), columns, len(diagnostics)))
            continue
        cells = [row.name, *([KIND_LABELS.get(row.kind, "")] if kinds else []),
                 *(_cell(*score(row, task, metric)[:2]) for task, metric in columns)]
        cells += [f"{row.diagnostics[key]:.3f}" if isinstance(row.diagnostics.get(key), float) else "" for key in diagnostics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band_size(rows: list[Row], row: Row) -> int:
    """How many random directions share `row`'s alpha (0 unless `row` is one of them)."""
    if row.kind != "random" or row.alpha is None:
        return 0
    return sum(other.kind == "random" and alpha_key(other.alpha) == alpha_key(row.alpha) for other in rows)


def band_name(alpha, size: int) -> str:
    return f"random band α={alpha_text(alpha)} ({size} directions)"


def _band_line(rows: list[Row], alpha, columns: list[tuple[str, str]], blanks: int) -> str:
    size = sum(row.kind == "random" and alpha_key(row.alpha) == alpha for row in rows)
    cells = [band_name(alpha, size), BAND_LABEL]
    for task, metric in columns:
        band = bands_of(rows, task, metric).get(alpha)
        cells.append("—" if band is None else f"{band.mean:.3f} [{band.spread[0]:.3f}–{band.spread[1]:.3f}]")
    return "| " + " | ".join(cells + [""] * blanks) + " |"


def paired_markdown(analysis: Analysis, lines: list[str]) -> str:
    """The paired tests (a table per column), the gaps to the instruction-tuned rows and the verdicts, as Markdown.

    Args:
        analysis: the paired tests (`paired.analyse`).
        lines: the verdict lines (`paired.verdicts`).

    Returns:
        Markdown.
    """
    text = ["## Paired tests", "", PAIRED_METHOD, ""]
    for (task, metric), entries in analysis.tests.items():
        text += [f"### {task} ({metric})", ""]
        note = analysis.notes.get((task, metric))
        if note:
            text += [note, ""]
        if not note or any(entry.band for entry in entries):
            text += ["| row | score | vs base target | p | vs random band's mean | p | in band |",
                     "|---|---|---|---|---|---|---|"]
            text += [_paired_line(entry) for entry in entries] + [""]
        bands = analysis.bands.get((task, metric)) or {}
        text += [f"Random band at α={alpha_text(alpha)}: mean {band.mean:.3f}, {band.spread_name} "
                 f"{band.spread[0]:.3f}–{band.spread[1]:.3f} ({len(band.values)} directions)" for alpha, band in bands.items()]
        text += [""] if bands else []
    return "\n".join(text + gap_markdown(analysis) + ["## Verdicts", ""] + [f"- {line}" for line in lines]) + "\n"


PAIRED_METHOD = ("Each row against the base target and against the mean of the random directions at its alpha, on the "
                 "same documents: the mean per-document difference with its 95 % interval (paired bootstrap over "
                 f"documents, {RESAMPLES:,} resamples, seeded) and the two-sided p-value of a paired permutation "
                 "(sign-flip) test; the band's mean per document is the mean of its directions' scores of it.")


GAP_METHOD = ("Each transplant row against each instruction-tuned row, on the same documents: the source (in ConTrans the "
              "aligned model the concept comes from) and `--instruct` (the target's instruction-tuned sibling). The "
              "share of the gap between the base target and that row which the transplant closes, mean(transplant − "
              "base) / mean(instruction-tuned − base), with the 95 % interval of that ratio over the paired "
              "bootstrap's resamples (documents drawn jointly). A gap its own paired test does not tell from zero "
              "(its interval holds 0, or p ≥ 0.05) has no ratio: \"no gap to close\".")


def gap_columns(analysis: Analysis) -> list[tuple[tuple[str, str], list[GapClosed], str | None]]:
    """(column, its `GapClosed`s, the note on why it has none) for each column holding a transplant row and an
    instruction-tuned row."""
    found = []
    for column, entries in analysis.tests.items():
        kinds = {entry.kind for entry in entries if entry.value is not None}
        if "contrans" in kinds and kinds & set(INSTRUCTION_TUNED):
            found.append((column, analysis.gaps.get(column, []), analysis.notes.get(column)))
    return found


def gap_markdown(analysis: Analysis) -> list[str]:
    """The gaps to the instruction-tuned rows, a table per column, as Markdown lines (none without such rows)."""
    text = []
    for (task, metric), gaps, note in gap_columns(analysis):
        text += [f"### {task} ({metric}): the gap to the instruction-tuned rows", ""]
        if note or not gaps:
            text += [f"{note or 'no paired test'}: no gap closed", ""]
            continue
        text += ["| transplant | instruction-tuned row | gap (row − base) | p | closes of the gap |", "|---|---|---|---|---|"]
        for gap in gaps:
            test = ["—", ""] if gap.gap is None else [format_test(gap.gap).replace("95 % CI ", ""), format_p(gap.gap.p_value)]
            closed = format_share(gap.share) if gap.share else "no gap to close" if gap.gap else gap.note
            text.append(f"| {gap.row} | {gap.reference} ({INSTRUCTION_TUNED[gap.reference_kind]}) | "
                        f"{' | '.join(test)} | {closed} |")
        text += [""]
    return ["## The gap to the instruction-tuned rows", "", GAP_METHOD, "", *text] if text else []


def _paired_line(entry: RowTests) -> str:
    value = "—" if entry.value is None else f"{entry.value:.3f}"
    cells = [entry.row, value]
    for test in (entry.vs_base, entry.vs_band):
        cells += ["—", ""] if test is None else [format_test(test).replace("95 % CI ", ""), format_p(test.p_value)]
    cells.append(entry.band.place(entry.value) if entry.band is not None and entry.value is not None else "")
    return "| " + " | ".join(cells) + " |"


def report_markdown(rows: list[Row], extra_metrics: tuple[str, ...] = (), concept: str | None = None,
                    analysis: Analysis | None = None) -> str:
    """The main table, then the paired tests and a verdict per column.

    Args:
        rows: the rows.
        extra_metrics: metrics shown beside each task's main metric.
        concept: the concept's name, to begin each verdict with.
        analysis: the paired tests when already made (`paired.analyse`).

    Returns:
        Markdown.
    """
    if not any(row.kind == "base" for row in rows):  # lm-eval output folders: nothing to pair with
        return markdown_table(rows, extra_metrics) + "\nNo paired tests: no base target row among these rows.\n"
    analysis = analysis or analyse(rows, columns_of(rows, extra_metrics))
    return markdown_table(rows, extra_metrics) + "\n" + paired_markdown(analysis, verdicts(analysis, concept))


PAIRED_CSV = ("vs_base", "vs_base_low", "vs_base_high", "vs_base_p", "vs_band", "vs_band_low", "vs_band_high",
              "vs_band_p", "in_band", "band_low", "band_high")


def write_csv(rows: list[Row], path: Path, extra_metrics: tuple[str, ...] = (), analysis: Analysis | None = None) -> None:
    """Every row (each random direction too), then a line per random band; per column the score, its standard error
    and the paired tests (`PAIRED_CSV`).

    Args:
        rows: the rows.
        path: the CSV file.
        extra_metrics: metrics shown beside each task's main metric.
        analysis: the paired tests when already made.
    """
    columns = columns_of(rows, extra_metrics)
    analysis = analysis or analyse(rows, columns)
    diagnostics = sorted({key for row in rows for key in row.diagnostics})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "kind", "kind_label", "alpha", *(f"{task}/{metric}{suffix}" for task, metric in columns
                                                     for suffix in ("", "_stderr", *(f"/{name}" for name in PAIRED_CSV))),
                         *diagnostics])
        for row in rows:
            cells = [row.name, row.kind, KIND_LABELS.get(row.kind, ""), "" if row.alpha is None else row.alpha]
            for column in columns:
                value, stderr, _ = score(row, *column)
                cells += ["" if value is None else value, "" if stderr is None else stderr, *_paired_cells(analysis, column, row)]
            writer.writerow(cells + [row.diagnostics.get(key, "") for key in diagnostics])
        for alpha in dict.fromkeys(alpha_key(row.alpha) for row in rows if band_size(rows, row) > 1):
            writer.writerow(_band_csv_line(rows, alpha, columns, analysis) + [""] * len(diagnostics))


GAP_CSV = ("task", "metric", "transplant", "alpha", "reference", "reference_kind", "gap", "gap_low", "gap_high", "gap_p",
           "closed", "closed_low", "closed_high", "note")


def write_gap_csv(analysis: Analysis, path: Path) -> bool:
    """The gaps to the instruction-tuned rows, a line per (column, instruction-tuned row, transplant row): the gap's
    paired test and the share closed as a fraction (`closed`, `closed_low`, `closed_high`; empty with a `note` where
    there is none); a column with no paired test is one line with its note. Not written without such rows.

    Args:
        analysis: the paired tests.
        path: the CSV file.

    Returns:
        Whether it was written.
    """
    found = gap_columns(analysis)
    if not found:
        return False
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(GAP_CSV)
        for (task, metric), gaps, note in found:
            if note or not gaps:
                writer.writerow([task, metric, *[""] * (len(GAP_CSV) - 3), f"{note or 'no paired test'}: no gap closed"])
            for gap in [] if note else gaps:
                test = ["", "", "", ""] if gap.gap is None else [gap.gap.difference, gap.gap.low, gap.gap.high,
                                                                 gap.gap.p_value]
                writer.writerow([task, metric, gap.row, "" if gap.alpha is None else alpha_text(gap.alpha), gap.reference,
                                 gap.reference_kind, *test, *(gap.share or ("", "", "")), gap.note or ""])
    return True


def _paired_cells(analysis: Analysis, column: tuple[str, str], row: Row) -> list:
    entry = next((entry for entry in analysis.tests.get(column, []) if entry.row == row.name), None)
    cells = []
    for test in (entry.vs_base, entry.vs_band) if entry is not None else (None, None):
        cells += ["", "", "", ""] if test is None else [test.difference, test.low, test.high, test.p_value]
    placed = entry is not None and entry.band is not None and entry.value is not None
    return cells + [entry.band.place(entry.value) if placed else "", "", ""]


def _band_csv_line(rows: list[Row], alpha, columns: list[tuple[str, str]], analysis: Analysis) -> list:
    size = sum(row.kind == "random" and alpha_key(row.alpha) == alpha for row in rows)
    cells = [band_name(alpha, size), "random band", BAND_LABEL, alpha_text(alpha)]
    for column in columns:
        band = analysis.bands.get(column, {}).get(alpha)
        cells += ["" if band is None else band.mean, ""] + [""] * (len(PAIRED_CSV) - 2)
        cells += ["", ""] if band is None else list(band.spread)
    return cells


def plot_task(rows: list[Row], task: str, path: Path, metric_name: str | None = None,
              analysis: Analysis | None = None) -> None:
    """Score vs alpha: the transplant and own-vector rows with their paired 95 % intervals against the base target as
    error bars (lm-eval's standard errors where there is no paired test), the random band as a shaded range around its
    mean, the other rows as horizontal lines.

    Args:
        rows: the rows.
        task: the task plotted.
        path: the PNG file.
        metric_name: the metric (None: the task's main metric).
        analysis: the paired tests (`paired.analyse`), when made.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric_name or next((score(row, task)[2] for row in rows if score(row, task)[2]), None)
    tests = {entry.row: entry.vs_base for entry in (analysis.tests.get((task, metric), []) if analysis else [])}
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind, style, label in (("contrans", "o-", "target + ConTrans"), ("own", "^:", "target's own vector")):
        points = sorted((row.alpha, score(row, task, metric)[:2], tests.get(row.name)) for row in rows
                        if row.kind == kind and isinstance(row.alpha, (int, float))
                        and score(row, task, metric)[0] is not None)
        if points:
            # the paired interval of the difference, around the row's own score
            errors = [[test.difference - test.low if test else stderr or 0.0 for _, (_, stderr), test in points],
                      [test.high - test.difference if test else stderr or 0.0 for _, (_, stderr), test in points]]
            paired = all(test for *_, test in points)
            axes.errorbar([alpha for alpha, *_ in points], [value for _, (value, _), _ in points], yerr=errors, fmt=style,
                          capsize=3, label=label + (" (paired 95 % CI vs base)" if paired else ""))
    _plot_band(axes, rows, task, metric)
    for index, row in enumerate(row for row in rows if row.kind not in ("contrans", "random", "own")):
        value = score(row, task, metric)[0]
        if value is not None:
            label = row.name + (f" ({INSTRUCTION_TUNED[row.kind]})" if row.kind in INSTRUCTION_TUNED else "")
            axes.axhline(value, linestyle="--", color=f"C{(index + 3) % 10}", label=label)
    axes.set_xlabel("alpha")
    axes.set_ylabel(metric or "score")
    axes.set_title(f"{task} ({metric})" if metric else task)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_band(axes, rows: list[Row], task: str, metric: str | None) -> None:
    """The random directions: one line with its standard errors where there is one per alpha, else the band's mean and
    its spread shaded."""
    bands = sorted((alpha, band) for alpha, band in bands_of(rows, task, metric).items() if isinstance(alpha, (int, float)))
    if not bands:
        return
    alphas = [alpha for alpha, _ in bands]
    if all(len(band.values) == 1 for _, band in bands):
        errors = [score(next(row for row in rows if row.kind == "random" and row.alpha == alpha), task, metric)[1] or 0.0
                  for alpha in alphas]
        axes.errorbar(alphas, [band.mean for _, band in bands], yerr=errors, fmt="s--", capsize=3,
                      label="random vector, same norm")
        return
    size = max(len(band.values) for _, band in bands)
    axes.fill_between(alphas, [band.spread[0] for _, band in bands], [band.spread[1] for _, band in bands], alpha=0.2,
                      color="C1", label=f"random band ({bands[0][1].spread_name}, {size} directions)")
    axes.plot(alphas, [band.mean for _, band in bands], "s--", color="C1", label="random band mean")


def read_json(path: Path, argument: str):
    """A JSON file the tools wrote, or an error naming it (a run killed while writing it, a disk that filled).

    Args:
        path: the file.
        argument: the argument an error names.

    Returns:
        What it holds.

    Raises:
        ConTransError: it cannot be read or is not valid JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConTransError(argument, f"{path}: not a readable JSON file ({error}); it was cut short or damaged: delete "
                                      "it (`contrans compare` runs a deleted row again)") from None


def rows_from_folder(folder: Path) -> list[Row]:
    """Rows of a grid folder (`contrans compare` output: the rows its index lists, in its order) or of
    lm-eval output folders (results_*.json)."""
    folder = Path(folder)
    index = folder / "rows" / "index.json"
    if index.is_file():
        rows = []
        for name in read_json(index, "folders"):
            path = folder / "rows" / name / "row.json"
            if path.is_file():
                saved = read_json(path, "folders")
                saved.pop("key", None)
                rows.append(Row(**saved))
        return rows
    rows = []
    for path in sorted(folder.rglob("results_*.json")):
        data = read_json(path, "folders")
        config = data.get("config", {})
        model_args = config.get("model_args", "")
        if isinstance(model_args, dict):
            model_args = ",".join(f"{k}={v}" for k, v in model_args.items())
        name = f"{config.get('model', '?')}({model_args})" if model_args else str(config.get("model", path.parent.name))
        contrans = config.get("contrans") or {}
        rows.append(Row(name=name, results=data.get("results", {}),
                        kind="contrans" if contrans else "other", alpha=contrans.get("alpha"),
                        diagnostics={"heldout_r2": contrans["heldout_r2"]} if "heldout_r2" in contrans else {},
                        main_metrics=main_metrics_of(data.get("configs", {}))))
    return rows


def write_report(rows: list[Row], out: Path, plots: bool = True, extra_metrics: tuple[str, ...] = (),
                 concept: str | None = None) -> Path:
    """table.md (the table, the paired tests, the gaps to the instruction-tuned rows, the verdicts), table.csv,
    gap_closed.csv (where the table has a transplant and an instruction-tuned row) and a plot per column, in `out`.

    Args:
        rows: the rows.
        out: the folder.
        plots: write the plots.
        extra_metrics: metrics shown beside each task's main metric.
        concept: the concept's name, to begin each verdict with.

    Returns:
        table.md's path.
    """
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(rows, columns_of(rows, extra_metrics))
    (out / "table.md").write_text(report_markdown(rows, extra_metrics, concept, analysis), encoding="utf-8")
    write_csv(rows, out / "table.csv", extra_metrics, analysis)
    if not write_gap_csv(analysis, out / "gap_closed.csv"):
        (out / "gap_closed.csv").unlink(missing_ok=True)  # a rerun's, not a table of other rows
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for task, metric in columns_of(rows, extra_metrics):
            main = next((score(row, task)[2] for row in rows if score(row, task)[2]), None)
            suffix = "" if metric == main else f"_{metric}"
            plot_task(rows, task, out / "plots" / f"{safe_name(task + suffix, 'task')}.png", metric, analysis)
    return out / "table.md"
