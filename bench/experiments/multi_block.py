"""Several target blocks at once (issue 21, lever 4): a little of the concept at each of three blocks,
against all of it at one.

For each emotion the default recipe builds three transplants in one source pass, at target depths
0.6, 0.75 (the default block) and 0.9, each with its own map (the source block chosen by held-out R^2
near that depth). On the dev data, steering success and the facts with:
- one block: 0.75 at alpha 1 (today's default);
- three blocks, alpha 1/3 at each (the same total alpha, in each block's own residual units);
- three blocks, alpha 1 at each;
and for each setting a random control: random vectors with the transplants' norms at the same blocks.

Run:  python bench/experiments/multi_block.py --data ../shared/data --json bench/results/multi_block.json [--limit 40]
      (about 30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import time

from lm_eval_contrans.experiments.data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata, write_json,
)

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
DEPTHS = [0.6, 0.75, 0.9]
SETTINGS = {"one block (0.75), α 1": ([0.75], 1.0), "three blocks, α 1/3 each": (DEPTHS, 1 / 3),
            "three blocks, α 1 each": (DEPTHS, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, default=40, help="scenarios per emotion task (make_results.py uses 40)")
    parser.add_argument("--emotions", nargs="+", default=EMOTIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplants

    started = time.time()
    shared = data_folder(args.data)
    print(f"machine: {machine()}; {args.limit} scenarios per emotion task", flush=True)
    rows = [GridRow("base", "base", TARGET, alpha=0.0, tasks=tuple(f"contrans_emotion_{e}" for e in args.emotions) + ("contrans_facts",))]
    blocks = {}
    for emotion in args.emotions:
        at_depth = dict(zip(DEPTHS, build_transplants(SOURCE, TARGET, [emotion] * len(DEPTHS), device="cpu", target_layer=DEPTHS)))
        blocks[emotion] = {str(depth): [t.source_layer, t.target_layer, t.heldout_r2] for depth, t in at_depth.items()}
        task = f"contrans_emotion_{emotion}"
        for setting, (depths, alpha) in SETTINGS.items():
            chosen = [at_depth[depth] for depth in depths]
            rows += [GridRow(f"{setting}|{emotion}|transplanted", "contrans", TARGET, chosen, (alpha,) * len(chosen), tasks=(task, "contrans_facts")),
                     GridRow(f"{setting}|{emotion}|random", "random", TARGET, [random_control(t, seed=0) for t in chosen],
                             (alpha,) * len(chosen), tasks=(task,))]
        print(f"[{time.time() - started:6.0f} s] built {emotion}: " + ", ".join(f"{d}: {s}->{t} R² {r:.3f}" for d, (s, t, r) in blocks[emotion].items()), flush=True)
    settings = EvalSettings(tasks=[], limit={**{f"contrans_emotion_{e}": args.limit for e in EMOTIONS}, "contrans_facts": None},
                            batch_size=args.batch_size, device="cpu", bootstrap_iters=0, task_metadata=task_metadata(shared))
    scores = {row.name: {task: {metric: value for metric, value in results.items() if metric.startswith("acc")}
                         for task, results in row.results.items()} for row in Grid(cache_root() / "experiments" / "multi_block", settings).run(rows)}
    document = {"limit": args.limit, "emotions": args.emotions, "settings": list(SETTINGS), "blocks": blocks, "scores": scores,
                "seconds": time.time() - started}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    scores = document["scores"]

    def acc(row: str, task: str) -> str:
        value = scores[row][task]
        stderr = value.get("acc_stderr,none")
        return f"{value['acc,none']:.2f}" + (f" ± {stderr:.2f}" if isinstance(stderr, float) else "")

    lines = [f"Steering success ({document['limit']} dev scenarios per emotion; base facts "
             f"{scores['base']['contrans_facts']['acc,none']:.3f}); blocks per emotion (source → target, held-out R²): " +
             "; ".join(f"{e} " + ", ".join(f"{s}→{t} {r:.3f}" for s, t, r in document["blocks"][e].values()) for e in document["emotions"]),
             "", "| setting | emotion | base | transplanted | random | facts (transplanted) |", "|---|---|---|---|---|---|"]
    for setting in document["settings"]:
        for emotion in document["emotions"]:
            task, name = f"contrans_emotion_{emotion}", f"{setting}|{emotion}"
            lines.append(f"| {setting} | {emotion} | {acc('base', task)} | {acc(name + '|transplanted', task)} | "
                         f"{acc(name + '|random', task)} | {scores[name + '|transplanted']['contrans_facts']['acc,none']:.3f} |")
        reached = sum(scores[f"{setting}|{e}|transplanted"][f"contrans_emotion_{e}"]["acc,none"] >= 0.8 for e in document["emotions"])
        lines.append(f"| {setting} | **≥ 0.8** | | **{reached} of {len(document['emotions'])}** | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
