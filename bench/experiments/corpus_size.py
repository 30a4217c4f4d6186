"""Anchor corpus size: the default recipe fitted on seeded random subsets of the shipped corpus vs the
whole corpus, on the packaged pair. For each size: the anchor tokens recorded (what the first build's
time is proportional to), held-out R^2 of the map, the cosine between each concept's transplanted
vector and the target's own vector at the same block, and emotion steering success at alpha 2 on the
first `--emotion-docs` dev scenarios of each `contrans_emotion_<e>` task.

Decides whether a smaller default corpus would shorten the main job's first run (issue 18) without
losing transfer.
Run: python bench/experiments/corpus_size.py --data ../shared/data [--sizes 600 1200] [--json FILE]
     python bench/experiments/corpus_size.py --render --json bench/results/corpus_size.json   (the table, from a saved run)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from experiment_data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata, write_json,
)

CONCEPTS = ["sentiment", "honesty", "toxicity", "happiness", "sadness", "anger", "fear", "disgust", "surprise"]
EMOTIONS = CONCEPTS[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 1200])
    parser.add_argument("--emotion-docs", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=2.0)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, target_own_vector
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant

    started = time.time()
    print(f"machine: {machine()}", flush=True)
    texts, _ = load_anchor_texts(None)
    work = Path(tempfile.mkdtemp(prefix="contrans-corpus-"))
    corpora = {}
    for size in sorted(args.sizes):
        subset = random.Random(0).sample(texts, size)  # seeded: the same subset every run
        path = work / f"anchors{size}.txt"
        path.write_text("\n".join(subset))
        corpora[size] = str(path)
    corpora[len(texts)] = None  # the shipped default
    grid = Grid(cache_root() / "experiments" / "corpus_size",
                EvalSettings(tasks=[], limit=args.emotion_docs, batch_size=8, device="cpu",
                             task_metadata=task_metadata(data_folder(args.data))))
    table, grid_rows = {}, []
    for size, anchors in corpora.items():
        anchor_texts, _ = load_anchor_texts(anchors)
        transplants, cosines = {}, {}
        for concept in CONCEPTS:
            transplant = build_transplant(SOURCE, TARGET, concept, anchors=anchors, device="cpu")
            own = target_own_vector(transplant, load_concept_set(concept), anchor_texts, device="cpu")
            transplants[concept], cosines[concept] = transplant, cosine(transplant.vector, own)
        grid_rows += [GridRow(f"{size} {emotion}", "contrans", TARGET, transplants[emotion], args.alpha,
                              tasks=(f"contrans_emotion_{emotion}",)) for emotion in EMOTIONS]
        first = transplants["sentiment"]
        table[size] = {"texts": size, "source_block": first.source_layer, "heldout_r2": first.heldout_r2,
                       "cos_to_own": cosines, "mean_cos": sum(cosines.values()) / len(cosines)}
        print(f"[{time.time() - started:6.0f} s] {size:5d} texts built", flush=True)
    measured = {row.name: next(iter(row.results.values()))["acc,none"] for row in grid.run(grid_rows)}
    for size, row in table.items():
        row["emotion_success"] = {emotion: measured[f"{size} {emotion}"] for emotion in EMOTIONS}
        row["emotions_at_0.8"] = sum(value >= 0.8 for value in row["emotion_success"].values())
        print(f"[{time.time() - started:6.0f} s] {size:5d} texts: source block {row['source_block']}, held-out R^2 "
              f"{row['heldout_r2']:.3f}, mean cosine to own {row['mean_cos']:.3f}, emotions >= 0.8 at alpha "
              f"{args.alpha:g}: {row['emotions_at_0.8']}/6", flush=True)
    document = {"alpha": args.alpha, "emotion_docs": args.emotion_docs, "shipped_texts": len(texts),
                "sizes": {str(size): row for size, row in table.items()}}
    print("\n" + render(document))
    write_json(args.json, document)


def render(document: dict) -> str:
    """The table bench/README.md shows, from the numbers `main` measured."""
    lines = ["| anchor texts | source block | held-out R² | mean cos to own | " + " | ".join(CONCEPTS)
             + f" | emotions ≥ 0.8 at α = {document['alpha']:g} | " + " | ".join(EMOTIONS) + " |",
             "|" + "---|" * (5 + len(CONCEPTS) + len(EMOTIONS))]
    for size, row in document["sizes"].items():
        label = f"{size} (shipped default)" if int(size) == document["shipped_texts"] else size
        lines.append(f"| {label} | {row['source_block']} | {row['heldout_r2']:.3f} | {row['mean_cos']:.3f} | "
                     + " | ".join(f"{row['cos_to_own'][c]:.3f}" for c in CONCEPTS) + f" | {row['emotions_at_0.8']}/6 | "
                     + " | ".join(f"{row['emotion_success'][e]:.2f}" for e in EMOTIONS) + " |")
    return "\n".join(lines) + (f"\n\nColumns 5–13: cosine to the target's own vector per concept; the last six: steering "
                               f"success per emotion at α = {document['alpha']:g} on the first {document['emotion_docs']} "
                               "dev scenarios of each task.")

if __name__ == "__main__":
    main()
