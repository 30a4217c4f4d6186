"""Loglikelihood scoring with and without the scored-position window, on the packaged pair.

`ConTransLM` projects only the final positions of a batch that hold continuation tokens through
the output layer (`score_continuations_only`, see `_scored_window`); HFLM projects every position.
With Gemma 3's 262k-word vocabulary that projection and its log-softmax dominate long prompts.
This runs each task both ways in one process (steered, alpha 1; contexts not shared, so that every
request goes through the window), prints seconds, the speed-up and the largest difference between
the two runs' per-choice log-likelihoods (it should be float noise). `compare_scoring` is also what
shared_context.py runs.

Run:  python bench/perf/scored_window.py --data ../shared/data   (about 10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import time

from _timing import SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, task_metadata, write_json

TASKS = {"contrans_honesty_mc2": 8, "contrans_honesty_mc1": 8, "contrans_toxicity": 8,
         "contrans_emotion_fear": 40, "contrans_facts": None, "contrans_sentiment": None}  # task: documents (None: all)


def per_choice_loglikelihoods(results: dict, task: str) -> list[float]:
    return [float(response[0]) for sample in results["samples"][task] for response in sample["filtered_resps"]]


def compare_scoring(description: str, settings: dict[str, dict]) -> None:
    """Run every task with ConTransLM made with each of two sets of arguments, interleaved; print the table."""
    parser = argparse.ArgumentParser(description=description)
    add_data_argument(parser)
    parser.add_argument("--concept", default="honesty")
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    task_manager = TaskManager(metadata=task_metadata(data_folder(args.data)))
    print(f"machine: {machine()}; concept {args.concept}, alpha 1, batch {args.batch_size}", flush=True)
    models = {name: ConTransLM(source=SOURCE, target=TARGET, concept=args.concept, device="cpu",
                               batch_size=args.batch_size, **arguments) for name, arguments in settings.items()}
    for lm in models.values():  # warm-up
        lm_eval.simple_evaluate(model=lm, tasks=["contrans_facts"], task_manager=task_manager, limit=8, verbosity="ERROR")
    (before, after), rows = list(settings), []
    for task, limit in TASKS.items():
        seconds, scores = {}, {}
        for name in (before, after, before, after):  # interleaved, best of two: the machine's noise is ~10 %
            start = time.perf_counter()
            results = lm_eval.simple_evaluate(model=models[name], tasks=[task], task_manager=task_manager, limit=limit,
                                              bootstrap_iters=0, log_samples=True, verbosity="ERROR")
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
            scores[name] = per_choice_loglikelihoods(results, task)
        difference = max(abs(a - b) for a, b in zip(scores[before], scores[after], strict=True))
        rows.append((task, limit, seconds[before], seconds[after], difference, len(scores[after])))
        print(f"{task}: {before} {seconds[before]:.1f} s, {after} {seconds[after]:.1f} s "
              f"({seconds[before] / seconds[after]:.2f} x), max |difference| {difference:.1e} over {len(scores[after])} choices",
              flush=True)
    print(f"\n| task (documents) | {before} | {after} | speed-up | max abs difference (choices) |\n|---|---|---|---|---|")
    for task, limit, slow, fast, difference, count in rows:
        print(f"| {task} ({'all' if limit is None else limit}) | {slow:.1f} s | {fast:.1f} s | {slow / fast:.2f} x | "
              f"{difference:.1e} ({count}) |")
    write_json(args.json, {"settings": settings, "rows": [dict(zip(("task", "limit", before, after, "max_difference",
                                                                    "choices"), row)) for row in rows]})


def main() -> None:
    compare_scoring(__doc__.splitlines()[0], {
        "all positions": {"share_context": False, "score_continuations_only": False},
        "scored window": {"share_context": False, "score_continuations_only": True},
    })


def render(document: dict) -> str:
    """Seconds per task under the two settings and the largest difference of scores, from a saved run."""
    before, after = list(document["settings"])
    return "; ".join(f"{row['task']} ({'all' if row['limit'] is None else row['limit']}): {row[before]:.1f} s → "
                     f"{row[after]:.1f} s (**{row[before] / row[after]:.2f} ×**), largest difference "
                     f"{row['max_difference']:.1e} over {row['choices']} choices" for row in document["rows"])


if __name__ == "__main__":
    main()
