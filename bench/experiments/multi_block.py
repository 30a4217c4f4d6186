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

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import FACTS, emotion_task

DEPTHS = [0.6, 0.75, 0.9]
SETTINGS = {"one block (0.75), α 1": ([0.75], 1.0), "three blocks, α 1/3 each": (DEPTHS, 1 / 3),
            "three blocks, α 1 each": (DEPTHS, 1.0)}


def main() -> None:
    args = emotions.parse_arguments(__doc__, render)
    if args is None:
        return

    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import GridRow
    from lm_eval_contrans.pipeline import build_transplants

    watch = emotions.Stopwatch()
    grid = emotions.grid("multi_block", args)
    rows = [emotions.base_row(TARGET, args.emotions)]
    blocks = {}
    for emotion in args.emotions:
        at_depth = dict(zip(DEPTHS, build_transplants(SOURCE, TARGET, [emotion] * len(DEPTHS), device="cpu", target_layer=DEPTHS)))
        blocks[emotion] = {str(depth): [t.source_layer, t.target_layer, t.heldout_r2] for depth, t in at_depth.items()}
        for setting, (depths, alpha) in SETTINGS.items():
            chosen = [at_depth[depth] for depth in depths]
            rows += [GridRow(f"{setting}|{emotion}|transplanted", "contrans", TARGET, chosen, (alpha,) * len(chosen),
                             tasks=(emotion_task(emotion), FACTS)),
                     GridRow(f"{setting}|{emotion}|random", "random", TARGET, [random_control(t, seed=0) for t in chosen],
                             (alpha,) * len(chosen), tasks=(emotion_task(emotion),))]
        watch.log(f"built {emotion}: " + ", ".join(f"{d}: {s}->{t} R² {r:.3f}" for d, (s, t, r) in blocks[emotion].items()))
    document = {"limit": args.limit, "emotions": args.emotions, "settings": list(SETTINGS), "blocks": blocks,
                "scores": emotions.accuracies(grid.run(rows)), "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    scores = document["scores"]
    lines = [f"Steering success ({document['limit']} dev scenarios per emotion; base facts "
             f"{scores['base'][FACTS]['acc,none']:.3f}); blocks per emotion (source → target, held-out R²): " +
             "; ".join(f"{e} " + ", ".join(f"{s}→{t} {r:.3f}" for s, t, r in document["blocks"][e].values()) for e in document["emotions"]),
             "", "| setting | emotion | base | transplanted | random | facts (transplanted) |", "|---|---|---|---|---|---|"]
    for setting in document["settings"]:
        for emotion in document["emotions"]:
            task, name = emotion_task(emotion), f"{setting}|{emotion}"
            lines.append(f"| {setting} | {emotion} | " + " | ".join(emotions.cell(scores, row, task) for row in
                                                                    ("base", f"{name}|transplanted", f"{name}|random"))
                         + f" | {scores[name + '|transplanted'][FACTS]['acc,none']:.3f} |")
        reached = emotions.steered(scores, {e: f"{setting}|{e}|transplanted" for e in document["emotions"]})
        lines.append(f"| {setting} | **≥ 0.8** | | **{reached} of {len(document['emotions'])}** | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
