"""All shipped tasks on the packaged pair, with ../shared/data: base target, target + transplanted
concept at alpha 1, 2, 5, and the source model. Prints a Markdown table (main metric +- stderr).

Run: python bench/bench_tasks.py [--limit N] [--shared ../shared/data] [--alphas 1 2 5]
(Full data takes hours on 2 CPU cores; --limit N evaluates the first N documents of each task.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import SHARED, SOURCE, TARGET, machine

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
CONCEPT_TASKS = {  # concept: [(task, main metric), ...]
    "honesty": [("contrans_honesty_mc1", "acc"), ("contrans_honesty_mc2", "acc")],
    "toxicity": [("contrans_toxicity", "acc_norm"), ("contrans_toxicity", "margin")],
    "sentiment": [("contrans_sentiment", "acc_norm"), ("contrans_sentiment", "margin")],
    **{emotion: [(f"contrans_emotion_{emotion}", "acc"), (f"contrans_emotion_{emotion}_own", "acc")] for emotion in EMOTIONS},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_TASKS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write all scores to this JSON file")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.build import build_transplant
    from lm_eval_contrans.lm_eval_model import ConTransLM
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    shared = Path(args.shared)
    metadata = {"truthfulqa_data": str(shared / "truthfulqa" / "truthfulqa_mc_dev.jsonl"),
                "toxigen_data": str(shared / "toxigen"), "emotion_data": str(shared / "emotions" / "scenarios_dev.json")}
    task_manager = TaskManager(metadata=metadata)
    print(f"machine: {machine()}; limit {args.limit}; data {shared}", flush=True)

    def evaluate(lm, tasks: list[str]) -> dict:
        results = lm_eval.simple_evaluate(model=lm, tasks=sorted(set(tasks)), task_manager=task_manager,
                                          limit=args.limit, bootstrap_iters=1000)["results"]
        return {(task, metric): (values[f"{metric},none"], values.get(f"{metric}_stderr,none"))
                for task, values in results.items() for metric in ("acc", "acc_norm", "margin") if f"{metric},none" in values}

    columns = [pair for concept in args.concepts for pair in CONCEPT_TASKS[concept]]
    tasks = [task for task, _ in columns]
    rows: dict[str, dict] = {}
    base = HFLM(pretrained=pretrained_path(parse_model_spec(TARGET, "target")), device="cpu", batch_size=args.batch_size)
    rows["base target (Gemma-3-270M)"] = evaluate(base, tasks)
    diagnostics = {}
    for concept in args.concepts:
        transplant = build_transplant(SOURCE, TARGET, concept, device="cpu", recipe=args.recipe)
        path = Path("/tmp") / f"contrans-bench-{concept}.safetensors"
        save_transplant(transplant, path)
        diagnostics[concept] = transplant.heldout_r2
        steered = ConTransLM(target=TARGET, vector=str(path), device="cpu", batch_size=args.batch_size)
        for alpha in args.alphas:
            steered.alpha = alpha
            rows.setdefault(f"+ ConTrans α={alpha:g}", {}).update(
                evaluate(steered, [task for task, _ in CONCEPT_TASKS[concept]]))
        del steered
    del base
    source = HFLM(pretrained=pretrained_path(parse_model_spec(SOURCE, "source")), device="cpu", batch_size=args.batch_size)
    rows["source (SmolLM2-135M-Instruct)"] = evaluate(source, tasks)

    header = "| model | " + " | ".join(f"{task.removeprefix('contrans_')} {metric}" for task, metric in columns) + " |"
    print("\n" + header + "\n|" + "---|" * (len(columns) + 1))
    for name, scores in rows.items():
        cells = []
        for column in columns:
            value, stderr = scores.get(column, (None, None))
            cells.append("—" if value is None else f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, float) else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nheld-out R^2 of the map: " + ", ".join(f"{c} {r:.3f}" for c, r in diagnostics.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({name: {f"{t}/{m}": v for (t, m), v in scores.items()}
                                               for name, scores in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
