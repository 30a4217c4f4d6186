"""Does the label matter? Each emotion's transplant against one built from the same pairs with the
positive and negative sides swapped at random (a label-permutation control).

The shuffled set has the emotion set's very texts, so its vector lies among the same scenario
states and goes through the same map; only the pairing with the emotion is broken. Both are
steered in residual units (equal norm at equal alpha) on the emotion's steering-success task.
A transplant that works only as "any push among scenario states" scores like its shuffled copy.

Run:  python bench/bench_shuffled_labels.py --shared ../shared/data [--limit 40] [--alphas 1 2 5]   (about 8 min on 2 cores)
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import yaml

from _common import SHARED, SOURCE, TARGET, machine, shared_task_metadata

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]


def shuffled_copy(concept: str, folder: Path, seed: int = 0) -> Path:
    """The shipped concept set with each pair's sides swapped on a fair coin (seeded)."""
    from lm_eval_contrans.concepts import load_concept_set

    concept_set = load_concept_set(concept)
    rng = random.Random(seed)
    pairs = []
    for positive, negative in zip(concept_set.positives, concept_set.negatives):
        if rng.random() < 0.5:
            positive, negative = negative, positive
        pairs.append({"positive": positive, "negative": negative})
    path = folder / f"{concept}_shuffled.yaml"
    path.write_text(yaml.safe_dump({"name": f"{concept}-shuffled", "pairs": pairs}, allow_unicode=True), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--limit", type=int, default=40, help="scenarios per task (make_results.py uses 40)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--emotions", nargs="+", default=EMOTIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.build import build_transplant
    from lm_eval_contrans.controls import cosine
    from lm_eval_contrans.lm_eval_model import ConTransLM

    folder = Path(tempfile.mkdtemp(prefix="contrans-shuffled-"))
    task_manager = TaskManager(metadata=shared_task_metadata(args.shared))
    print(f"machine: {machine()}; {args.limit} scenarios per task", flush=True)

    def success(lm, emotion: str) -> float:
        task = f"contrans_emotion_{emotion}"
        results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=args.limit,
                                          bootstrap_iters=0, verbosity="ERROR")["results"]
        return results[task]["acc,none"]

    lm = None
    rows = []
    for emotion in args.emotions:
        real = build_transplant(SOURCE, TARGET, emotion, device="cpu")
        shuffled = build_transplant(SOURCE, TARGET, shuffled_copy(emotion, folder), device="cpu")
        if lm is None:
            first = folder / "first.safetensors"
            save_transplant(real, first)
            lm = ConTransLM(target=TARGET, vector=str(first), device="cpu", batch_size=args.batch_size)
        scores = {}
        for kind, transplant in (("transplanted", real), ("shuffled labels", shuffled)):
            lm.transplant = transplant
            for alpha in args.alphas:
                lm.alpha = alpha
                scores[kind, alpha] = success(lm, emotion)
        rows.append((emotion, cosine(real.vector, shuffled.vector), scores))
        print(f"{emotion}: " + ", ".join(f"{kind} α={alpha:g} {value:.2f}" for (kind, alpha), value in scores.items()), flush=True)

    print("\n| emotion | cos(transplanted, shuffled) | " + " | ".join(
        f"{kind} α={alpha:g}" for kind in ("transplanted", "shuffled labels") for alpha in args.alphas) + " |")
    print("|---|---|" + "---|" * (2 * len(args.alphas)))
    for emotion, similarity, scores in rows:
        print(f"| {emotion} | {similarity:.2f} | " + " | ".join(
            f"{scores[kind, alpha]:.2f}" for kind in ("transplanted", "shuffled labels") for alpha in args.alphas) + " |")


if __name__ == "__main__":
    main()
