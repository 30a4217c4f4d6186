"""Honesty and toxicity at the default alpha on more documents than make_results.py uses (issue 4).

The default recipe's honesty and toxicity transplants at alpha = 1 (or each --alphas value) against
the base target and a random vector of equal norm, on the first N dev documents (0: all of them),
with the factual-completion control under each steer. It prints the paired difference to the base
(the same documents under both), whose standard error is what says whether a small gain is more
than noise, and then the paired difference between the transplant and the random vector at each
alpha: whether the transplant beats the control on the same documents, not only the base. With
--random-seeds N there are N random directions (seeds 0..N-1; seed 0 is the "random, equal norm" row);
the transplant is then paired with their mean on each document, which estimates "a random vector of
equal norm" with less noise than one direction does. With --depths the steer is split over the target blocks at those depths (each its own
transplant, the source block chosen by held-out R^2 near it), alpha / (number of blocks) at each, and the
random control is a random vector of each transplant's norm at each block (issue 21, lever 4).
--json writes every per-document score; --render --json FILE prints the tables from it.

Run:  python bench/experiments/default_alpha.py --data ../shared/data [--honesty 50 --toxicity 100]   (about 30 min on 2 cores)
      python bench/experiments/default_alpha.py --concepts toxicity --toxicity 0   (one concept)
      python bench/experiments/default_alpha.py --concepts toxicity --toxicity 0 --depths 0.6 0.75 0.9   (three blocks)
      python bench/experiments/default_alpha.py --render --json bench/results/default_alpha.json   (from a saved run)
      python bench/experiments/default_alpha.py --honesty 0 --toxicity 0 --alphas 1 2 5 --device cuda
            --source S.gguf --target T.gguf --batch-size 64     (all dev documents, on a GPU)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from experiment_data import (
    add_data_argument, add_json_argument, add_pair_arguments, data_folder, machine, printed_from_saved, task_metadata,
    write_json,
)

CONCEPT_TASKS = {"honesty": ("contrans_honesty_mc2", "acc"), "toxicity": ("contrans_toxicity", "acc_norm")}
FACTS = ("contrans_facts", "acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--honesty", type=int, default=50, help="TruthfulQA MC2 questions (0: all)")
    parser.add_argument("--toxicity", type=int, default=100, help="ToxiGen prompt lists (0: all)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_TASKS), choices=list(CONCEPT_TASKS))
    parser.add_argument("--random-seeds", type=int, default=1, help="random directions of equal norm (seeds 0..N-1)")
    parser.add_argument("--depths", type=float, nargs="+", help="split each steer over the target blocks at these depths")
    add_json_argument(parser, render=True)
    add_pair_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return
    if 1 in (args.honesty, args.toxicity):
        parser.error("a paired standard error needs at least 2 documents per task (0: all)")

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplants

    started = time.time()
    limits = {"contrans_honesty_mc2": args.honesty or None, "contrans_toxicity": args.toxicity or None, "contrans_facts": None}
    print(f"machine: {machine()}; alphas {args.alphas}; documents {limits}", flush=True)

    depths = args.depths or [None]  # None: the default block
    transplants = {concept: build_transplants(args.source, args.target, [concept] * len(depths), device=args.device, target_layer=depths)
                   for concept in args.concepts}
    randoms = ["random, equal norm"] + [f"random seed {seed}" for seed in range(1, args.random_seeds)]  # seed 0's rows keep one name
    blocks = "" if args.depths is None else " over depths " + "+".join(f"{depth:g}" for depth in depths)  # new rows, new names
    grid_rows = [GridRow("base target", "base", args.target, alpha=0.0,
                         tasks=tuple(sorted({CONCEPT_TASKS[c][0] for c in args.concepts} | {FACTS[0]})))]
    for concept in args.concepts:
        vectors = [transplants[concept]] + [[random_control(t, seed=seed) for t in transplants[concept]] for seed in range(args.random_seeds)]
        for kind, vector in zip(["transplanted", *randoms], vectors):
            for alpha in args.alphas:
                grid_rows.append(GridRow(f"{concept} {kind} α={alpha:g}{blocks}", "contrans" if kind == "transplanted" else "random",
                                         args.target, *split_over_blocks(vector, alpha), tasks=(CONCEPT_TASKS[concept][0], FACTS[0])))
    grid = Grid(cache_root() / "experiments" / "default_alpha",
                EvalSettings(tasks=[], limit=limits, batch_size=args.batch_size, device=args.device, bootstrap_iters=0,
                             task_metadata=task_metadata(data_folder(args.data)), per_document=("acc", "acc_norm")))
    measured = {row.name: row for row in grid.run(grid_rows)}
    print(f"[{time.time() - started:5.0f} s] every row evaluated", flush=True)
    base = {task: measured["base target"].per_document[task][metric]
            for task, metric in [*(CONCEPT_TASKS[c] for c in args.concepts), FACTS]}
    steered = {" / ".join((concept, kind, f"{alpha:g}", task)): measured[f"{concept} {kind} α={alpha:g}{blocks}"].per_document[task][metric]
               for concept in args.concepts for kind in ["transplanted", *randoms] for alpha in args.alphas
               for task, metric in (CONCEPT_TASKS[concept], FACTS)}
    document = {"concepts": args.concepts, "alphas": args.alphas, "randoms": randoms, "limits": limits, "depths": args.depths,
                "blocks": {concept: [[t.source_layer, t.target_layer] for t in transplants[concept]] for concept in args.concepts},
                "base": base, "steered": steered, "seconds": time.time() - started}
    write_json(args.json, document)  # first: a run is kept even if printing it fails
    print("\n" + render(document), flush=True)


def split_over_blocks(transplants: list, alpha: float) -> tuple:
    """A row's transplant and alpha: one block as a single transplant (keyed as rows were before --depths,
    so they are read back), several with alpha / their number at each."""
    if len(transplants) == 1:
        return transplants[0], alpha
    return transplants, (alpha / len(transplants),) * len(transplants)


def finite(after: list[float], before: list[float]) -> tuple[list[float], list[float]]:
    """The documents where both scores are numbers. lm-eval's MC2 is NaN on a question where every
    answer's probability underflows to zero (a steer strong enough to wreck the model)."""
    kept = [(a, b) for a, b in zip(after, before) if math.isfinite(a) and math.isfinite(b)]
    return [a for a, _ in kept], [b for _, b in kept]


def paired(after: list[float], before: list[float]) -> str:
    """Mean of the paired differences ± its standard error, over the documents where both are numbers."""
    return "{:+.3f} ± {:.3f}".format(*paired_values(after, before))


def paired_values(after: list[float], before: list[float]) -> tuple[float, float]:
    """(mean of the paired differences, its standard error), over the documents where both are numbers."""
    after, before = finite(after, before)
    differences = [a - b for a, b in zip(after, before)]
    return statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def with_direction_spread(ours: list[float], directions: list[list[float]]) -> str:
    """The paired difference to the mean of several random directions, its standard error over documents
    widened by the spread of the directions' own means (sd / sqrt(N))."""
    difference, over_documents = paired_values(ours, [statistics.mean(values) for values in zip(*directions)])
    between = statistics.stdev([mean(direction) for direction in directions]) / math.sqrt(len(directions))
    return f"{difference:+.3f} ± {math.hypot(over_documents, between):.3f}"


def counted(after: list[float], before: list[float]) -> str:
    """How many documents a row rests on, and how many were left out as NaN."""
    left_out = len(after) - len(finite(after, before)[0])
    return f"{len(after) - left_out}" + (f" ({left_out} NaN left out)" if left_out else "")


def mean(values: list[float]) -> float:
    return statistics.mean([value for value in values if math.isfinite(value)])


def render(document: dict) -> str:
    """Both tables: each steer paired against the base, then the transplant paired against the random control."""
    base, steered, randoms = document["base"], document["steered"], document["randoms"]

    def scores(concept: str, kind: str, alpha: float, task: str) -> list[float]:
        return steered[" / ".join((concept, kind, f"{alpha:g}", task))]

    lines = [] if not document.get("depths") else [
        "Each steer split over the target blocks at depths " + ", ".join(f"{depth:g}" for depth in document["depths"])
        + " (source → target: " + "; ".join(f"{concept} " + ", ".join(f"{s}→{t}" for s, t in document["blocks"][concept])
                                             for concept in document["concepts"])
        + f"), α / {len(document['depths'])} at each: α is the total.", ""]
    lines += ["| concept | steer | alpha | task | base | steered | paired difference ± s.e. | documents |",
              "|---|---|---|---|---|---|---|---|"]
    for concept in document["concepts"]:
        for kind in ["transplanted", *randoms]:
            for alpha in document["alphas"]:
                for task, metric in (CONCEPT_TASKS[concept], FACTS):
                    after, before = scores(concept, kind, alpha, task), base[task]
                    lines.append(f"| {concept} | {kind} | {alpha:g} | {task} {metric} | {mean(before):.3f} | "
                                 f"{mean(after):.3f} | {paired(after, before)} | {counted(after, before)} |")
    several = len(randoms) > 1
    control_name = "random" if not several else f"mean of {len(randoms)} random"
    lines += ["", "The transplant against the random vector of equal norm, paired on the same documents"
              + ("" if not several else f" (the mean of {len(randoms)} random directions on each; then the standard error "
                                        "widened by the spread between the directions' own means, sd / √N, since the directions "
                                        "are a sample too; then against each direction alone)") + ":", "",
              f"| concept | alpha | task | transplanted | {control_name} | paired difference ± s.e. | documents |"
              + (" directions' spread added | above a direction by ≥ 2 s.e. |" if several else ""),
              "|---|---|---|---|---|---|---|" + ("---|---|" if several else "")]
    for concept in document["concepts"]:
        for alpha in document["alphas"]:
            for task, metric in (CONCEPT_TASKS[concept], FACTS):
                ours = scores(concept, "transplanted", alpha, task)
                directions = [scores(concept, kind, alpha, task) for kind in randoms]
                control = [statistics.mean(values) for values in zip(*directions)]
                line = (f"| {concept} | {alpha:g} | {task} {metric} | {mean(ours):.3f} | "
                        f"{mean(control):.3f} | {paired(ours, control)} | {counted(ours, control)} |")
                if several:
                    beaten = sum(difference > 2 * error for difference, error in (paired_values(ours, d) for d in directions))
                    line += f" {with_direction_spread(ours, directions)} | {beaten} of {len(directions)} |"
                lines.append(line)
    return "\n".join(lines)

if __name__ == "__main__":
    main()
