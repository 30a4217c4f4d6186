"""All shipped tasks on the packaged pair, with ../shared/data: base target, target + transplanted
concept at alpha 1, 2, 5, and the source model. Prints a Markdown table (main metric +- stderr).

With --random, each transplant row has a random-vector row of equal norm beside it. A second table
gives the factual-completion control (contrans_facts acc) under each concept's transplant.

With --json FILE the scores are written to FILE, and a second run with the same FILE skips the rows
already there and prints the table from it (the file records the settings; it refuses to mix runs
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

from lm_eval_contrans.experiments.data import add_data_argument, add_pair_arguments, data_folder, machine, task_metadata

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
        if args.json:
            Path(args.json).write_text(json.dumps({
                "settings": settings, "heldout_r2": diagnostics,
                "rows": {name: {f"{t}/{m}": v for (t, m), v in scored.items()} for name, scored in rows.items()}}, indent=1))

    named = {"base target": f"base target ({args.target})", "source": f"source ({args.source})"}
    header = "| model | " + " | ".join(f"{task.removeprefix('contrans_')} {metric}" for task, metric in columns) + " |"
    print("\n" + header + "\n|" + "---|" * (len(columns) + 1))
    for name, scores in rows.items():
        if name.startswith("facts under"):
            continue
        cells = []
        for column in columns:
            value, stderr = scores.get(column, (None, None))
            cells.append("—" if value is None else f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, float) else ""))
        print(f"| {named.get(name, name)} | " + " | ".join(cells) + " |")

    base_facts = rows["base target"][FACTS][0]
    print(f"\nfacts acc under each steer (base target {base_facts:.3f}; difference to it in points):\n")
    print("| concept | steer | " + " | ".join(f"α={alpha:g}" for alpha in args.alphas) + " |")
    print("|---|---|" + "---|" * len(args.alphas))
    for concept in args.concepts:
        for kind in steer_names:
            cells = [rows.get(f"facts under {concept} {kind} α={alpha:g}", {}).get(FACTS) for alpha in args.alphas]
            print(f"| {concept} | {kind} | " + " | ".join("—" if cell is None else f"{cell[0]:.3f} ({100 * (cell[0] - base_facts):+.1f})"
                                                       for cell in cells) + " |")
    if diagnostics:
        print("\nheld-out R^2 of the map: " + ", ".join(f"{c} {r:.3f}" for c, r in diagnostics.items()))
    print(f"[{time.time() - started:6.0f} s] done", flush=True)


if __name__ == "__main__":
    main()
