"""Honesty and toxicity at the default alpha on more documents than make_results.py uses (issue 4).

The default recipe's honesty and toxicity transplants at alpha = 1 (or each --alphas value) against
the base target and a random vector of equal norm, on the first N dev documents (0: all of them),
with the factual-completion control under each steer. Besides lm-eval's standard errors it prints
the paired difference to the base (the same documents under both), whose standard error is what
says whether a small gain is more than noise.

Run:  python bench/bench_default_alpha.py --shared ../shared/data [--honesty 50 --toxicity 100]   (about 30 min on 2 cores)
      python bench/bench_default_alpha.py --honesty 0 --toxicity 0 --alphas 1 2 5 --device cuda
            --source S.gguf --target T.gguf --batch-size 64     (all dev documents, on a GPU)
"""

from __future__ import annotations

import argparse
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

    transplants = {concept: build_transplant(args.source, args.target, concept, device=args.device) for concept in CONCEPT_TASKS}
    first = Path(tempfile.mkdtemp(prefix="contrans-alpha-")) / "honesty.safetensors"
    save_transplant(transplants["honesty"], first)
    lm = ConTransLM(target=args.target, vector=str(first), device=args.device, batch_size=args.batch_size)

    lm.alpha = 0.0
    base = {task: per_document(lm, task, metric) for task, metric in [*CONCEPT_TASKS.values(), FACTS]}
    print(f"[{time.time() - started:5.0f} s] base target evaluated", flush=True)
    print("\n| concept | steer | alpha | task | base | steered | paired difference ± s.e. | documents |")
    print("|---|---|---|---|---|---|---|---|")
    for concept, (task, metric) in CONCEPT_TASKS.items():
        for kind, vector in (("transplanted", transplants[concept]), ("random, equal norm", random_control(transplants[concept], seed=0))):
            for alpha in args.alphas:
                lm.transplant, lm.alpha = vector, alpha
                for row_task, row_metric in ((task, metric), FACTS):
                    steered = per_document(lm, row_task, row_metric)
                    before = base[row_task]
                    differences = [after - prior for after, prior in zip(steered, before)]
                    error = statistics.stdev(differences) / math.sqrt(len(differences))
                    print(f"| {concept} | {kind} | {alpha:g} | {row_task} {row_metric} | {statistics.mean(before):.3f} | "
                          f"{statistics.mean(steered):.3f} | {statistics.mean(differences):+.3f} ± {error:.3f} | "
                          f"{len(differences)} |", flush=True)
    print(f"\n[{time.time() - started:5.0f} s] done", flush=True)


if __name__ == "__main__":
    main()
