"""Levers together (issue 21): the map taught by contrasts of the other emotions (lever 2,
contrast_map.py) at each of three target blocks (lever 4, multi_block.py), against each lever alone.

At each of multi_block's target depths (0.6, 0.75, 0.9; blocks 11, 14, 16, each with the source block
the default recipe chooses by held-out R^2) the states of every shipped concept are recorded
(`map_levers.LeverStates`) and each emotion's taught map is chosen by contrast_map's rule, without the
emotion (`contrast_rows.choose_for_emotions`), at that pair of blocks. multi_block's settings (one
block at 0.75, alpha 1; three blocks, alpha 1/3 each; three blocks, alpha 1 each), each with:
- the default map and its random control: multi_block's own rows, run on multi_block's grid, so they
  are read back rather than rerun when every setting that determines them is the same;
- the taught map (with the facts), and the shuffled-label control carried by the same taught maps.
One block with the taught map at alpha 1 is contrast_map's steering row, rerun here on this grid.

The other two levers are left out: concept-aware anchors (lever 1) need the emotion's own scenarios
to move the cosine at all (+0.03 with them, nothing without), and the effect-size alpha (lever 3) is a
weaker push than alpha 1 for every emotion on this pair, which lowered the count alone.

Run:  python bench/experiments/levers_together.py --data ../shared/data --json bench/results/levers_together.json [--limit 40]
"""

from __future__ import annotations

import dataclasses

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import EMOTIONS, FACTS, emotion_task

DEPTHS = [0.6, 0.75, 0.9]
SETTINGS = {"one block (0.75), α 1": ([0.75], 1.0), "three blocks, α 1/3 each": (DEPTHS, 1 / 3),
            "three blocks, α 1 each": (DEPTHS, 1.0)}  # multi_block.py's, whose row names these are
TAUGHT = "taught map"


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False)
    if args is None:
        return

    from contrast_rows import (
        ContrastFit, carried_cosine, choose_for_emotions, chosen_map, emotion_carry,
    )
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import GridRow
    from map_levers import LeverStates

    watch = emotions.Stopwatch()
    grid = emotions.grid("multi_block", args)  # shared with multi_block.py (see the docstring)
    default, taught, shuffled, blocks, chosen, cosines = {}, {}, {}, {}, {}, {}
    for depth in DEPTHS:
        states = LeverStates.record(SOURCE, TARGET, target_layer=depth)
        fit = ContrastFit(states.anchor_source, states.anchor_target)
        chosen[str(depth)], _ = choose_for_emotions(states, fit)
        carry = emotion_carry(states, fit, chosen[str(depth)])
        first = states.transplants[EMOTIONS[0]]
        blocks[str(depth)] = [first.source_layer, first.target_layer, first.heldout_r2]
        cosines[str(depth)] = {}
        for emotion in EMOTIONS:
            transplant = states.transplants[emotion]
            default.setdefault(emotion, {})[depth] = transplant
            taught.setdefault(emotion, {})[depth] = through(transplant, carry(emotion, states.source_vector(states.pairs[emotion])))
            shuffled.setdefault(emotion, {})[depth] = through(transplant, carry(emotion, states.source_vector(states.shuffled_pairs(emotion))))
            cosines[str(depth)][emotion] = {"default": carried_cosine(states, emotion, fit.weight()),
                                            TAUGHT: carried_cosine(states, emotion, chosen_map(states, fit, emotion, chosen[str(depth)][emotion]))}
        watch.log(f"depth {depth}: blocks {blocks[str(depth)][:2]}, chosen {chosen[str(depth)]}; cosines to own "
                  + ", ".join(f"{e} {c['default']:.2f}->{c[TAUGHT]:.2f}" for e, c in cosines[str(depth)].items()))
        del states

    rows = [emotions.base_row(TARGET, EMOTIONS)]
    for emotion in EMOTIONS:
        task = emotion_task(emotion)
        for setting, (depths, alpha) in SETTINGS.items():
            alphas = (alpha,) * len(depths)
            rows += [GridRow(f"{setting}|{emotion}|transplanted", "contrans", TARGET, [default[emotion][d] for d in depths], alphas, tasks=(task, FACTS)),
                     GridRow(f"{setting}|{emotion}|random", "random", TARGET, [random_control(default[emotion][d], seed=0) for d in depths],
                             alphas, tasks=(task,)),
                     GridRow(f"{TAUGHT}, {setting}|{emotion}|transplanted", "contrans", TARGET, [taught[emotion][d] for d in depths], alphas,
                             tasks=(task, FACTS)),
                     GridRow(f"{TAUGHT}, {setting}|{emotion}|shuffled", "shuffled", TARGET, [shuffled[emotion][d] for d in depths], alphas,
                             tasks=(task,))]
    scores = emotions.accuracies(grid.run(rows))
    watch.log(f"{len(grid.reused)} rows read back from the grid, {len(grid.seconds)} evaluated")
    document = {"limit": args.limit, "settings": list(SETTINGS), "blocks": blocks, "chosen": chosen, "cosines": cosines,
                "reused": sorted(grid.reused), "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def through(transplant, vector):
    """The vector a taught map carried, where `transplant` steers (its block, norm and alpha unit): a direction,
    since the transplant's map and R² are not this vector's."""
    return dataclasses.replace(transplant.direction, vector=vector.float(), origin={"map": TAUGHT})


def render(document: dict) -> str:
    """Cosines to the target's own vectors per block, then steering per setting with both maps and their controls."""
    scores, cosines = document["scores"], document["cosines"]
    lines = ["Cosine to the target's own vector at each block (default map → taught map), and the blocks (source → target, held-out R²):", "",
             "| depth | blocks | " + " | ".join(EMOTIONS) + " | mean |", "|---|---|" + "---|" * (len(EMOTIONS) + 1)]
    for depth, by_emotion in cosines.items():
        source, target, r2 = document["blocks"][depth]
        means = [sum(c[name] for c in by_emotion.values()) / len(by_emotion) for name in ("default", TAUGHT)]
        lines.append(f"| {depth} | {source}→{target}, {r2:.3f} | " + " | ".join(f"{c['default']:.2f} → {c[TAUGHT]:.2f}" for c in by_emotion.values())
                     + f" | {means[0]:.3f} → {means[1]:.3f} |")
    lines += ["", f"Steering success ({document['limit']} dev scenarios per emotion; base facts {scores['base'][FACTS]['acc,none']:.3f}):", "",
              "| setting | emotion | base | default map | random | taught map | shuffled labels (taught) | facts: default | facts: taught |",
              "|---|---|---|---|---|---|---|---|---|"]
    for setting in document["settings"]:
        for emotion in EMOTIONS:
            task = emotion_task(emotion)
            names = ("base", f"{setting}|{emotion}|transplanted", f"{setting}|{emotion}|random",
                     f"{TAUGHT}, {setting}|{emotion}|transplanted", f"{TAUGHT}, {setting}|{emotion}|shuffled")
            lines.append(f"| {setting} | {emotion} | " + " | ".join(emotions.cell(scores, name, task) for name in names)
                         + f" | {scores[names[1]][FACTS]['acc,none']:.3f} | {scores[names[3]][FACTS]['acc,none']:.3f} |")
        reached = [emotions.steered(scores, {e: f"{prefix}{setting}|{e}|transplanted" for e in EMOTIONS}) for prefix in ("", f"{TAUGHT}, ")]
        lines.append(f"| {setting} | **≥ 0.8** | | **{reached[0]} of 6** | | **{reached[1]} of 6** | | | |")
        def beats_controls(emotion: str, row: str, controls: list[str]) -> bool:
            task = emotion_task(emotion)
            return scores[row][task]["acc,none"] >= 0.8 and emotions.above_controls(scores, row, controls, task, document["limit"])

        beating = [sum(beats_controls(e, f"{setting}|{e}|transplanted", [f"{setting}|{e}|random"]) for e in EMOTIONS),
                   sum(beats_controls(e, f"{TAUGHT}, {setting}|{e}|transplanted", [f"{setting}|{e}|random", f"{TAUGHT}, {setting}|{e}|shuffled"])
                       for e in EMOTIONS)]
        lines.append(f"| {setting} | **≥ 0.8, above its controls** | | **{beating[0]} of 6** (random) | | **{beating[1]} of 6** (both) | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
