"""Seconds per task at several batch sizes: the base target on the CPU, each task's first N documents.

Why make_results.py evaluates in batches of 8: TruthfulQA's 6-shot prompts are long, and a batch of
16 of them holds 16 x ~400 positions x Gemma's 262k-word logits (and their log-softmax) at once;
the short tasks barely care. Run in one process, batch sizes interleaved per task, one pass each.

Run:  python bench/perf/batch_size.py --data ../shared/data [--batch-sizes 4 8 16]   (about 5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import time

from _timing import TARGET, add_data_argument, add_json_argument, data_folder, machine, task_metadata, write_json

TASKS = {"contrans_honesty_mc2": 4, "contrans_toxicity": 4, "contrans_emotion_fear": 40, "contrans_facts": None,
         "contrans_sentiment": None}  # task: documents (None: all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    add_json_argument(parser)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    task_manager = TaskManager(metadata=task_metadata(data_folder(args.data)))
    print(f"machine: {machine()}", flush=True)
    lm = HFLM(pretrained=pretrained_path(parse_model_spec(TARGET, "target")), device="cpu", batch_size=args.batch_sizes[0])
    lm_eval.simple_evaluate(model=lm, tasks=["contrans_facts"], task_manager=task_manager, limit=8, verbosity="ERROR")  # warm-up
    seconds: dict = {}
    for task, limit in TASKS.items():
        for batch_size in args.batch_sizes:
            lm.batch_size_per_gpu = batch_size  # what HFLM batches loglikelihood requests by
            start = time.perf_counter()
            lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=limit, bootstrap_iters=0,
                                    verbosity="ERROR")
            seconds[task, batch_size] = time.perf_counter() - start
            print(f"{task} ({'all' if limit is None else limit} docs), batch {batch_size}: {seconds[task, batch_size]:.1f} s", flush=True)
    print("\n| task (documents) | " + " | ".join(f"batch {size}" for size in args.batch_sizes) + " |")
    print("|---|" + "---|" * len(args.batch_sizes))
    for task, limit in TASKS.items():
        print(f"| {task} ({'all' if limit is None else limit}) | "
              + " | ".join(f"{seconds[task, size]:.1f} s" for size in args.batch_sizes) + " |")
    write_json(args.json, {"seconds": {f"{task}|{size}": value for (task, size), value in seconds.items()}})


def render(document: dict) -> str:
    """Seconds per task at each batch size, from a saved run."""
    by_task: dict[str, list[str]] = {}
    for key, seconds in document["seconds"].items():
        task, size = key.split("|")
        by_task.setdefault(task, []).append(f"{seconds:.1f} s at {size}")
    return "; ".join(f"{task}: {', '.join(cells)}" for task, cells in by_task.items())


if __name__ == "__main__":
    main()
