"""All shipped tasks on the packaged pair, with ../shared/data: base target, target + transplanted
concept at alpha 1, 2, 5, and the source model. Prints a Markdown table (main metric +- stderr).

With --random, each transplant row has a random-vector row of equal norm beside it. A second table
gives the factual-completion control (contrans_facts acc) under each concept's transplant.

With --json FILE the scores are written to FILE, and a second run with the same FILE skips the rows
already there and prints the tables from it (`render`; bench/render_docs.py writes them into docs/RESULTS.md) (the file records the settings; it refuses to mix runs
with other ones). The rows run on the experiment grid, whose folder in the cache keeps each row as it
finishes, so a long run that is stopped resumes where it was.

Run: python bench/experiments/all_tasks.py [--limit N] [--data ../shared/data] [--alphas 1 2 5] [--random] [--json FILE]
(Full data takes hours on 2 CPU cores; --limit N evaluates the first N documents of each task.
 On a GPU: --device cuda --batch-size 64, with --source/--target naming the GGUF files if the
 packages are not installed there.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from experiment_data import (
    add_data_argument, add_pair_arguments, commit_at_start, data_folder, machine, task_metadata, write_json,
)

FACTS = ("contrans_facts", "acc")
EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
CONCEPT_TASKS = {  # concept: [(task, main metric), ...]
    "honesty": [("contrans_honesty_mc1", "acc"), ("contrans_honesty_mc2", "acc")],
    "toxicity": [("contrans_toxicity", "acc_norm"), ("contrans_toxicity", "margin")],
    "sentiment": [("contrans_sentiment", "acc_norm"), ("contrans_sentiment", "margin")],
    **{emotion: [(f"contrans_emotion_{emotion}", "acc"), (f"contrans_emotion_{emotion}_own", "acc")] for emotion in EMOTIONS},
}


def data_location(shared: Path) -> str:
    """The data folder relative to this checkout (../shared/data), so that a saved run resumes from
    any clone that sits beside the data, not only from the folder it was measured in."""
    return Path(os.path.relpath(shared.resolve(), Path(__file__).resolve().parents[2])).as_posix()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_TASKS))
    parser.add_argument("--random", action="store_true", help="add random-vector rows of equal norm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="write all scores to this JSON file after every row; resume from it")
    add_pair_arguments(parser)
    args = parser.parse_args()
    commit_at_start()  # the commit the saved file records: the code this run started with

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant

    started = time.time()
    shared = data_folder(args.data)
    print(f"machine: {machine()}; limit {args.limit}; data {shared}", flush=True)

    def scores_of(row) -> dict:
        return {(task, metric): (values[f"{metric},none"], values.get(f"{metric}_stderr,none"))
                for task, values in row.results.items() for metric in ("acc", "acc_norm", "margin") if f"{metric},none" in values}

    columns = [pair for concept in args.concepts for pair in CONCEPT_TASKS[concept]]
    rows: dict[str, dict] = {}
    diagnostics: dict[str, float] = {}
    settings = {"recipe": args.recipe, "limit": args.limit, "source": args.source, "target": args.target,
                "data": data_location(shared)}
    if args.json and Path(args.json).exists():
        saved = json.loads(Path(args.json).read_text())
        if saved.get("settings") != settings:
            parser.error(f"{args.json} holds a run with other settings ({saved.get('settings')}); name another file")
        rows = {name: {tuple(key.split("/", 1)): tuple(value) for key, value in scored.items()}
                for name, scored in saved["rows"].items()}
        diagnostics = saved.get("heldout_r2", {})
        print(f"resuming from {args.json}: {len(rows)} rows", flush=True)

    def measured(row: str, wanted: list) -> bool:
        return all(column in rows.get(row, {}) for column in wanted)

    # the rows still missing, on one grid (its folder resumes a run stopped half-way, row by row)
    grid_rows, placed = [], {}  # placed: grid row name -> [(table row, which columns)]
    for row, spec, kind, wanted in (("base target", args.target, "base", columns + [FACTS]),
                                    ("source", args.source, "source", columns)):
        missing = tuple(sorted({task for task, metric in wanted if not measured(row, [(task, metric)])}))
        if missing:
            grid_rows.append(GridRow(row, kind, spec, alpha=0.0 if kind == "base" else None, tasks=missing))
            placed[row] = [(row, None)]
    steer_names = ["ConTrans", "random"] if args.random else ["ConTrans"]
    for concept in args.concepts:
        todo = [(kind, alpha) for kind in steer_names for alpha in args.alphas
                if not (measured(f"+ {kind} α={alpha:g}", CONCEPT_TASKS[concept])
                        and measured(f"facts under {concept} {kind} α={alpha:g}", [FACTS]))]
        if not todo:
            continue
        transplant = build_transplant(args.source, args.target, concept, device=args.device, recipe=args.recipe)
        diagnostics[concept] = transplant.heldout_r2
        vectors = {"ConTrans": transplant, "random": random_control(transplant, seed=0)}
        tasks = tuple(sorted({task for task, _ in CONCEPT_TASKS[concept]} | {FACTS[0]}))
        for kind, alpha in todo:
            name = f"{concept} {kind} α={alpha:g}"
            grid_rows.append(GridRow(name, "contrans" if kind == "ConTrans" else kind, args.target, vectors[kind], alpha,
                                     tasks=tasks))
            placed[name] = [(f"+ {kind} α={alpha:g}", "concept"), (f"facts under {concept} {kind} α={alpha:g}", "facts")]
    if grid_rows:
        grid = Grid(cache_root() / "experiments" / f"all_tasks-{args.recipe}-{args.limit}",
                    EvalSettings(tasks=[], limit=args.limit, batch_size=args.batch_size, device=args.device,
                                 task_metadata=task_metadata(shared)))
        for result in grid.run(grid_rows):
            for row, part in placed[result.name]:
                scores = scores_of(result)
                if part == "concept":
                    scores = {key: value for key, value in scores.items() if key[0] != FACTS[0]}
                elif part == "facts":
                    scores = {FACTS: scores[FACTS]}
                rows.setdefault(row, {}).update(scores)
        print(f"[{time.time() - started:6.0f} s] {len(grid_rows)} rows measured", flush=True)
        write_json(args.json, {"settings": settings, "heldout_r2": diagnostics,
                               "rows": {name: {f"{t}/{m}": v for (t, m), v in scored.items()} for name, scored in rows.items()}})

    document = {"settings": settings, "heldout_r2": diagnostics,
                "rows": {name: {f"{t}/{m}": v for (t, m), v in scored.items()} for name, scored in rows.items()}}
    print("\n" + render(document))
    print(f"[{time.time() - started:6.0f} s] done", flush=True)


def render(document: dict) -> str:
    """The tables docs/RESULTS.md shows, from a saved run: honesty, toxicity and sentiment per row; each
    emotion's success / own-scenario accuracy; the facts under every steer."""
    rows, settings = document["rows"], document["settings"]
    alphas = sorted({float(name.rsplit("α=", 1)[1]) for name in rows if name.startswith("+ ")})
    steers = [f"+ {kind} α={alpha:g}" for kind in ("ConTrans", "random") for alpha in alphas if f"+ {kind} α={alpha:g}" in rows]
    named = {"base target": f"base target ({settings['target']})", "source": f"source ({settings['source']})"}

    def value(row: str, task: str, metric: str) -> list | None:
        return rows.get(row, {}).get(f"{task}/{metric}")

    def scored(cell: list | None) -> str:
        return "—" if cell is None else f"{cell[0]:.3f}" + (f" ± {cell[1]:.3f}" if isinstance(cell[1], float) else "")

    columns = [column for concept in ("honesty", "toxicity", "sentiment") for column in CONCEPT_TASKS[concept]]
    lines = ["**Honesty, toxicity, sentiment**", "",
             "| model | " + " | ".join(f"{task.removeprefix('contrans_')} {metric}" for task, metric in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {named.get(row, row)} | " + " | ".join(scored(value(row, *column)) for column in columns) + " |"
              for row in ["base target", "source", *steers] if any(value(row, *column) for column in columns)]

    def emotion_cells(row: str) -> list[str]:
        return [" / ".join("—" if cell is None else f"{cell[0]:.3f}" for cell in
                           (value(row, f"contrans_emotion_{e}", "acc"), value(row, f"contrans_emotion_{e}_own", "acc")))
                for e in EMOTIONS]

    def reached(row: str) -> str:
        return f"{sum((value(row, f'contrans_emotion_{e}', 'acc') or [0])[0] >= 0.8 for e in EMOTIONS)}/6"

    lines += ["", "**Emotions**: steering success on the other emotions' scenarios / accuracy on the emotion's own", "",
              "| model | " + " | ".join(EMOTIONS) + " | success ≥ 0.8 |", "|" + "---|" * (len(EMOTIONS) + 2)]
    randoms = [row for row in steers if row.startswith("+ random")]
    for row in ["base target", "source", *(row for row in steers if row not in randoms)]:
        if any(value(row, f"contrans_emotion_{e}", "acc") for e in EMOTIONS):
            lines.append(f"| {row} | " + " | ".join(emotion_cells(row)) + f" | {reached(row)} |")
    if randoms and all(emotion_cells(row) == emotion_cells(randoms[0]) for row in randoms):  # one line for equal rows
        label = "+ random α=" + ", ".join(row.rsplit("=", 1)[1] for row in randoms) + " (each)"
        lines.append(f"| {label} | " + " | ".join(emotion_cells(randoms[0])) + f" | {reached(randoms[0])} |")
    else:
        lines += [f"| {row} | " + " | ".join(emotion_cells(row)) + f" | {reached(row)} |" for row in randoms]

    base_facts = rows["base target"][f"{FACTS[0]}/{FACTS[1]}"][0]

    def facts(concept: str, kind: str) -> list[str]:
        cells = [value(f"facts under {concept} {kind} α={alpha:g}", *FACTS) for alpha in alphas]
        return ["—" if cell is None else f"{cell[0]:.3f} ({100 * (cell[0] - base_facts):+.1f})" for cell in cells]

    lines += ["", f"Facts accuracy under the same steers (base {base_facts:.3f}; change in points).", "",
              "| concept | " + " | ".join(f"α={alpha:g}" for alpha in alphas) + " |", "|" + "---|" * (len(alphas) + 1)]
    concepts = [concept for concept in CONCEPT_TASKS if any(value(f"facts under {concept} ConTrans α={a:g}", *FACTS) for a in alphas)]
    lines += [f"| {concept} | " + " | ".join(facts(concept, "ConTrans")) + " |" for concept in concepts]
    random_facts = {tuple(facts(concept, "random")) for concept in CONCEPT_TASKS
                    if any(value(f"facts under {concept} random α={a:g}", *FACTS) for a in alphas)}
    if len(random_facts) == 1:  # residual units: one random vector per alpha, whatever the concept
        lines.append("| random (any concept) | " + " | ".join(next(iter(random_facts))) + " |")
    if document.get("heldout_r2"):
        lines += ["", "held-out R² of the map: " + ", ".join(f"{c} {r:.3f}" for c, r in document["heldout_r2"].items())]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
