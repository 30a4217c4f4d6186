"""All shipped tasks on the packaged pair, with ../shared/data: base target, target + transplanted
concept at alpha 1, 2, 5, and the source model. Prints a Markdown table (main metric +- stderr).

With --random, each transplant row has a random-vector row of equal norm beside it. A second table
gives the factual-completion control (contrans_facts acc) under each concept's transplant.

With --json FILE every row is written to FILE as soon as it is measured, and a second run with the
same FILE skips the rows already there, so a long run that is stopped resumes where it was (the
file records the settings; it refuses to mix runs with other ones).

Run: python bench/bench_tasks.py [--limit N] [--shared ../shared/data] [--alphas 1 2 5] [--random] [--json FILE]
(Full data takes hours on 2 CPU cores; --limit N evaluates the first N documents of each task.
 On a GPU: --device cuda --batch-size 64, with --source/--target naming the GGUF files if the
 packages are not installed there.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import SHARED, add_pair_arguments, machine, shared_task_metadata

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
    return Path(os.path.relpath(shared.resolve(), Path(__file__).resolve().parents[1])).as_posix()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_TASKS))
    parser.add_argument("--random", action="store_true", help="add random-vector rows of equal norm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="write all scores to this JSON file after every row; resume from it")
    add_pair_arguments(parser)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.build import build_transplant
    from lm_eval_contrans.controls import random_control
    from lm_eval_contrans.lm_eval_model import ConTransLM
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.scoring import FastScoringHFLM

    started = time.time()
    shared = Path(args.shared)
    task_manager = TaskManager(metadata=shared_task_metadata(shared))
    print(f"machine: {machine()}; limit {args.limit}; data {shared}", flush=True)

    def evaluate(lm, tasks: list[str]) -> dict:
        results = lm_eval.simple_evaluate(model=lm, tasks=sorted(set(tasks)), task_manager=task_manager,
                                          limit=args.limit, bootstrap_iters=1000, verbosity="ERROR")["results"]
        return {(task, metric): (values[f"{metric},none"], values.get(f"{metric}_stderr,none"))
                for task, values in results.items() for metric in ("acc", "acc_norm", "margin") if f"{metric},none" in values}

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

    def record(row: str, scores: dict) -> None:
        rows.setdefault(row, {}).update(scores)
        print(f"[{time.time() - started:6.0f} s] {row}: {len(scores)} scores", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "settings": settings, "heldout_r2": diagnostics,
                "rows": {name: {f"{t}/{m}": v for (t, m), v in scored.items()} for name, scored in rows.items()}}, indent=1))

    def measured(row: str, wanted: list) -> bool:
        return all(column in rows.get(row, {}) for column in wanted)

    def hf(spec: str, role: str) -> FastScoringHFLM:  # scored as the steered rows are
        return FastScoringHFLM(pretrained=pretrained_path(parse_model_spec(spec, role)), device=args.device, batch_size=args.batch_size)

    for row, spec, role, wanted in (("base target", args.target, "target", columns + [FACTS]),
                                    ("source", args.source, "source", columns)):
        missing = sorted({task for task, metric in wanted if not measured(row, [(task, metric)])})
        if missing:
            model = hf(spec, role)
            record(row, evaluate(model, missing))
            del model
    steer_names = ["ConTrans", "random"] if args.random else ["ConTrans"]
    for concept in args.concepts:
        todo = [(kind, alpha) for kind in steer_names for alpha in args.alphas
                if not (measured(f"+ {kind} α={alpha:g}", CONCEPT_TASKS[concept])
                        and measured(f"facts under {concept} {kind} α={alpha:g}", [FACTS]))]
        if not todo:
            continue
        transplant = build_transplant(args.source, args.target, concept, device=args.device, recipe=args.recipe)
        path = Path(tempfile.mkdtemp(prefix="contrans-bench-")) / f"{concept}.safetensors"
        save_transplant(transplant, path)
        diagnostics[concept] = transplant.heldout_r2
        steered = ConTransLM(target=args.target, vector=str(path), device=args.device, batch_size=args.batch_size)
        vectors = {"ConTrans": transplant, "random": random_control(transplant, seed=0)}
        for kind, alpha in todo:
            steered.transplant, steered.alpha = vectors[kind], alpha
            scores = evaluate(steered, [task for task, _ in CONCEPT_TASKS[concept]] + [FACTS[0]])
            record(f"+ {kind} α={alpha:g}", {key: value for key, value in scores.items() if key[0] != FACTS[0]})
            record(f"facts under {concept} {kind} α={alpha:g}", {FACTS: scores[FACTS]})
        del steered

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
