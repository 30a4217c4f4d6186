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
from lm_eval_contrans.paths import safe_name

# For results without their task's config (a group's aggregate, an old file): the first of these present.
FALLBACK_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mc2", "word_perplexity")


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

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "alpha": self.alpha, "diagnostics": self.diagnostics,
                "results": self.results, "main_metrics": self.main_metrics, "per_document": self.per_document,
                "artifact": self.artifact}

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
    columns = columns_of(rows, extra_metrics)
    diagnostics = sorted({key for row in rows for key in row.diagnostics})
    header = ["model", *(f"{task} ({metric})" for task, metric in columns), *diagnostics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, *(_cell(*score(row, task, metric)[:2]) for task, metric in columns)]
        cells += [f"{row.diagnostics[key]:.3f}" if isinstance(row.diagnostics.get(key), float) else "" for key in diagnostics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path, extra_metrics: tuple[str, ...] = ()) -> None:
    columns = columns_of(rows, extra_metrics)
    diagnostics = sorted({key for row in rows for key in row.diagnostics})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "kind", "alpha",
                         *(f"{task}/{metric}{suffix}" for task, metric in columns for suffix in ("", "_stderr")),
                         *diagnostics])
        for row in rows:
            cells = [row.name, row.kind, "" if row.alpha is None else row.alpha]
            for task, wanted in columns:
                value, stderr, _ = score(row, task, wanted)
                cells += ["" if value is None else value, "" if stderr is None else stderr]
            cells += [row.diagnostics.get(key, "") for key in diagnostics]
            writer.writerow(cells)


def plot_task(rows: list[Row], task: str, path: Path, metric_name: str | None = None) -> None:
    """Score vs alpha for the steered rows (one line per kind), other rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    metric = None
    for kind, style in (("contrans", "o-"), ("random", "s--"), ("own", "^:")):
        points = sorted((row.alpha, score(row, task, metric_name)) for row in rows if row.kind == kind
                        and row.alpha is not None and score(row, task, metric_name)[0] is not None)
        if points:
            alphas = [alpha for alpha, _ in points]
            values = [value for _, (value, _, _) in points]
            errors = [stderr or 0.0 for _, (_, stderr, _) in points]
            axes.errorbar(alphas, values, yerr=errors, fmt=style, capsize=3,
                          label={"contrans": "target + ConTrans", "random": "random vector, same norm",
                                 "own": "target's own vector"}[kind])
            metric = points[0][1][2]
    for index, row in enumerate(row for row in rows if row.kind not in ("contrans", "random", "own")):
        value, _, row_metric = score(row, task, metric_name)
        if value is not None:
            axes.axhline(value, linestyle="--", color=f"C{(index + 3) % 10}", label=row.name)
            metric = metric or row_metric
    axes.set_xlabel("alpha")
    axes.set_ylabel(metric or "score")
    axes.set_title(f"{task} ({metric})" if metric else task)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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


def write_report(rows: list[Row], out: Path, plots: bool = True, extra_metrics: tuple[str, ...] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown_table(rows, extra_metrics), encoding="utf-8")
    write_csv(rows, out / "table.csv", extra_metrics)
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for task, metric in columns_of(rows, extra_metrics):
            main = next((score(row, task)[2] for row in rows if score(row, task)[2]), None)
            suffix = "" if metric == main else f"_{metric}"
            plot_task(rows, task, out / "plots" / f"{safe_name(task + suffix, 'task')}.png", metric)
    return out / "table.md"
