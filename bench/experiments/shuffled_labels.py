"""Does the label matter? Each emotion's transplant against one built from the same pairs with the
positive and negative sides swapped at random (a label-permutation control).

The shuffled set has the emotion set's very texts, so its vector lies among the same scenario
states and goes through the same map; only the pairing with the emotion is broken. Both are
steered in residual units (equal norm at equal alpha) on the emotion's steering-success task.
A transplant that works only as "any push among scenario states" scores like its shuffled copy.

Run:  python bench/experiments/shuffled_labels.py --data ../shared/data [--limit 40] [--alphas 1 2 5]   (about 8 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiment_data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata,
)

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, default=40, help="scenarios per task (make_results.py uses 40)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--emotions", nargs="+", default=EMOTIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, shuffled_labels
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant

    print(f"machine: {machine()}; {args.limit} scenarios per task", flush=True)
    grid = Grid(cache_root() / "experiments" / "shuffled_labels",
                EvalSettings(tasks=[], limit=args.limit, batch_size=args.batch_size, device="cpu", bootstrap_iters=0,
                             task_metadata=task_metadata(data_folder(args.data))))
    built, grid_rows = {}, []
    for emotion in args.emotions:
        real = build_transplant(SOURCE, TARGET, emotion, device="cpu")
        shuffled = build_transplant(SOURCE, TARGET, shuffled_labels(load_concept_set(emotion)), device="cpu")
        built[emotion] = cosine(real.vector, shuffled.vector)
        for kind, transplant in (("transplanted", real), ("shuffled labels", shuffled)):
            for alpha in args.alphas:
                grid_rows.append(GridRow(f"{emotion} {kind} α={alpha:g}", "contrans" if kind == "transplanted" else "shuffled",
                                         TARGET, transplant, alpha, tasks=(f"contrans_emotion_{emotion}",)))
    success = {row.name: next(iter(row.results.values()))["acc,none"] for row in grid.run(grid_rows)}
    rows = [(emotion, built[emotion], {(kind, alpha): success[f"{emotion} {kind} α={alpha:g}"]
                                      for kind in ("transplanted", "shuffled labels") for alpha in args.alphas})
            for emotion in args.emotions]
    document = {"limit": args.limit, "alphas": args.alphas, "rows": [
        {"emotion": emotion, "cosine": similarity, "success": {f"{kind} α={alpha:g}": value for (kind, alpha), value in scores.items()}}
        for emotion, similarity, scores in rows]}
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=1))
    print(render(document))


def render(document: dict) -> str:
    """The docs/RESULTS.md table, from the numbers `main` measured."""
    columns = [f"{kind} α={alpha:g}" for kind in ("transplanted", "shuffled labels") for alpha in document["alphas"]]
    lines = ["| emotion | cos(transplanted, shuffled) | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for row in document["rows"]:
        lines.append(f"| {row['emotion']} | {row['cosine']:.2f} | " + " | ".join(f"{row['success'][c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
