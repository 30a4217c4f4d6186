"""Honesty and toxicity at the default alpha on more documents than make_results.py uses (issue 4).

The default recipe's honesty and toxicity transplants at alpha = 1 (or each --alphas value) against
the base target and a random vector of equal norm, on the first N dev documents (0: all of them),
with the factual-completion control under each steer. It prints the paired difference to the base
(the same documents under both), whose standard error is what says whether a small gain is more
than noise, and then the paired difference between the transplant and the random vector at each
alpha: whether the transplant beats the control on the same documents, not only the base. With
--random-seeds N there are N random directions (seeds 0..N-1); the transplant is then paired with
their mean on each document, which estimates "a random vector of equal norm" with less noise than
one direction does. --json writes every per-document score.

Run:  python bench/bench_default_alpha.py --shared ../shared/data [--honesty 50 --toxicity 100]   (about 30 min on 2 cores)
      python bench/bench_default_alpha.py --concepts toxicity --toxicity 0   (one concept)
      python bench/bench_default_alpha.py --honesty 0 --toxicity 0 --alphas 1 2 5 --device cuda
            --source S.gguf --target T.gguf --batch-size 64     (all dev documents, on a GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from _common import SHARED, add_pair_arguments, machine, shared_task_metadata

CONCEPT_TASKS = {"honesty": ("contrans_honesty_mc2", "acc"), "toxicity": ("contrans_toxicity", "acc_norm")}
FACTS = ("contrans_facts", "acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--honesty", type=int, default=50, help="TruthfulQA MC2 questions (0: all)")
    parser.add_argument("--toxicity", type=int, default=100, help="ToxiGen prompt lists (0: all)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_TASKS), choices=list(CONCEPT_TASKS))
    parser.add_argument("--random-seeds", type=int, default=1, help="random directions of equal norm (seeds 0..N-1)")
    parser.add_argument("--json", default=None, help="write the per-document scores to this file")
    add_pair_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if 1 in (args.honesty, args.toxicity):
        parser.error("a paired standard error needs at least 2 documents per task (0: all)")

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.build import build_transplant
    from lm_eval_contrans.controls import random_control
    from lm_eval_contrans.lm_eval_model import ConTransLM

    started = time.time()
    task_manager = TaskManager(metadata=shared_task_metadata(args.shared))
    limits = {"contrans_honesty_mc2": args.honesty or None, "contrans_toxicity": args.toxicity or None, "contrans_facts": None}
    print(f"machine: {machine()}; alphas {args.alphas}; documents {limits}", flush=True)

    def per_document(lm, task: str, metric: str) -> list[float]:
        output = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=limits[task],
                                         log_samples=True, bootstrap_iters=0, verbosity="ERROR")
        samples = sorted(output["samples"][task], key=lambda sample: sample["doc_id"])
        return [float(sample[metric]) for sample in samples]

    def paired(after: list[float], before: list[float]) -> str:
        differences = [a - b for a, b in zip(after, before)]
        error = statistics.stdev(differences) / math.sqrt(len(differences))
        return f"{statistics.mean(differences):+.3f} ± {error:.3f}"

    transplants = {concept: build_transplant(args.source, args.target, concept, device=args.device) for concept in args.concepts}
    first = Path(tempfile.mkdtemp(prefix="contrans-alpha-")) / f"{args.concepts[0]}.safetensors"
    save_transplant(transplants[args.concepts[0]], first)
    lm = ConTransLM(target=args.target, vector=str(first), device=args.device, batch_size=args.batch_size)

    lm.alpha = 0.0
    base = {task: per_document(lm, task, metric) for task, metric in [*(CONCEPT_TASKS[c] for c in args.concepts), FACTS]}
    print(f"[{time.time() - started:5.0f} s] base target evaluated", flush=True)
    print("\n| concept | steer | alpha | task | base | steered | paired difference ± s.e. | documents |")
    print("|---|---|---|---|---|---|---|---|")
    steered = {}  # (concept, kind, alpha, task) -> per-document scores
    randoms = ["random, equal norm"] if args.random_seeds == 1 else [f"random seed {seed}" for seed in range(args.random_seeds)]
    for concept in args.concepts:
        task, metric = CONCEPT_TASKS[concept]
        vectors = [transplants[concept]] + [random_control(transplants[concept], seed=seed) for seed in range(args.random_seeds)]
        for kind, vector in zip(["transplanted", *randoms], vectors):
            for alpha in args.alphas:
                lm.transplant, lm.alpha = vector, alpha
                for row_task, row_metric in ((task, metric), FACTS):
                    scores = steered[concept, kind, alpha, row_task] = per_document(lm, row_task, row_metric)
                    if args.json:
                        Path(args.json).write_text(json.dumps({"base": base, "steered": {
                            " / ".join(map(str, key)): value for key, value in steered.items()}}))
                    before = base[row_task]
                    print(f"| {concept} | {kind} | {alpha:g} | {row_task} {row_metric} | {statistics.mean(before):.3f} | "
                          f"{statistics.mean(scores):.3f} | {paired(scores, before)} | {len(scores)} |", flush=True)
    control_name = "random" if args.random_seeds == 1 else f"mean of {args.random_seeds} random"
    print("\nThe transplant against the random vector of equal norm, paired on the same documents"
          + ("" if args.random_seeds == 1 else f" (the mean of {args.random_seeds} random directions on each)") + ":\n")
    print(f"| concept | alpha | task | transplanted | {control_name} | paired difference ± s.e. | documents |")
    print("|---|---|---|---|---|---|---|")
    for concept in args.concepts:
        task, metric = CONCEPT_TASKS[concept]
        for alpha in args.alphas:
            for row_task, row_metric in ((task, metric), FACTS):
                ours = steered[concept, "transplanted", alpha, row_task]
                control = [statistics.mean(scores) for scores in zip(*(steered[concept, kind, alpha, row_task] for kind in randoms))]
                print(f"| {concept} | {alpha:g} | {row_task} {row_metric} | {statistics.mean(ours):.3f} | "
                      f"{statistics.mean(control):.3f} | {paired(ours, control)} | {len(ours)} |", flush=True)
    print(f"\n[{time.time() - started:5.0f} s] done", flush=True)


if __name__ == "__main__":
    main()
