"""Contrast rows in the map (issue 21, lever 2): fit the map on the neutral anchors and on the
(positive - negative) state differences of other concepts' pairs.

The default map is fitted on neutral anchor tokens, whose variance is mostly position and token
identity; a concept vector is a difference between two kinds of text, in directions that fit weighs
little. The fit, the teachings and the rule that chooses an emotion's teaching without it live in
`contrast_rows.py` (beside this script); here they run at the default recipe's blocks (source
26, target 14). Choosing without the concept it is used for:
- `other sets`: lambda on the mean cosine to the target's own vector over sentiment, honesty and
  toxicity (each taught by the other sets);
- an emotion's `other emotions` maps: `contrast_rows.choose_for_emotions`.
Each emotion is steered on the dev data at the default alpha (1, residual units; --alphas for more) with the default map
and with each chosen map (if not lambda 0), beside the random vector (alpha is in residual units, so
one random direction serves every map) and the shuffled-label control through the same map; the facts
under each transplanted row.

Run:  python bench/experiments/contrast_map.py --data ../shared/data --json bench/results/contrast_map.json [--limit 40] [--alphas 1 2]
"""

from __future__ import annotations

import emotion_steering as emotions
import map_levers
from contrast_rows import (
    ACROSS, LAMBDAS, TEACHINGS, ContrastFit, carried_cosine, choose_for_emotions, chosen_map, emotion_carry,
)
from emotion_steering import EMOTIONS
from experiment_data import SOURCE, TARGET, write_json
from map_levers import CONCEPTS, SELECTION

WITHIN_LEVER = "contrasts of the other emotions"


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False,
                                      more=lambda parser: parser.add_argument("--alphas", type=float, nargs="+", default=[1.0],
                                                                              help="alphas of the steering rows (residual units)"))
    if args is None:
        return

    from lm_eval_contrans.reformulate import heldout_split, r_squared
    from lm_eval_contrans.experiments.controls import cosine

    watch = emotions.Stopwatch()
    grid = emotions.grid("contrast_map", args)
    states = map_levers.LeverStates.record(SOURCE, TARGET)
    source, target = states.anchor_source, states.anchor_target
    train, test = heldout_split(states.anchor_groups, seed=0)
    fits = {"all": ContrastFit(source, target), "train": ContrastFit(source[train], target[train])}
    checks = {concept: {**check, "default map from the anchor states": cosine(
        states.transplants[concept].source_vector.double() @ fits["all"].weight(), states.transplants[concept].vector)}
        for concept, check in states.checks.items()}
    watch.log(f"{len(source):,} anchor token pairs ({len(test):,} held out); checks (cosines, 1 = reproduced): "
        + "; ".join(f"{c} " + "/".join(f"{v:.4f}" for v in check.values()) for c, check in checks.items()))

    cosines, r2 = {}, {}
    for fraction in LAMBDAS:
        for teaching in TEACHINGS:
            setting = f"{fraction:g}|{teaching}"
            cosines[setting] = {c: carried_cosine(states, c, fits["all"].taught(states, c, teaching, fraction))
                                for c in (CONCEPTS if teaching == ACROSS else EMOTIONS)}
            fit = fits["train"]  # what the teaching costs on neutral text (the first emotion's teaching set)
            predicted = (source[test].double() - fit.source_mean) @ fit.taught(states, EMOTIONS[0], teaching, fraction) + fit.target_mean
            r2[setting] = r_squared(predicted, target[test].double())
            watch.log(f"{setting}: " + ", ".join(f"{c} {v:.3f}" for c, v in cosines[setting].items()))
    across = map_levers.choose({setting: values for setting, values in cosines.items() if setting.endswith("|" + ACROSS)})
    watch.log(f"{ACROSS}: lambda chosen on {', '.join(SELECTION)}: {across.split('|')[0]}")
    within, inner = choose_for_emotions(states, fits["all"])
    watch.log(f"{WITHIN_LEVER}: chosen per emotion on the other five: {within}")

    levers = {}
    if float(across.split("|")[0]) > 0:  # lambda 0 is the default map: nothing new to steer
        levers[f"{ACROSS}, λ {across.split('|')[0]}"] = lambda emotion, vector: vector @ chosen_map(states, fits["all"], emotion, across)
    if any(float(setting.split("|")[0]) > 0 for setting in within.values()):
        levers[WITHIN_LEVER] = emotion_carry(states, fits["all"], within)
    scores = emotions.accuracies(grid.run(map_levers.steering_rows(states, TARGET, levers, tuple(args.alphas)))) if levers else {}
    document = {"limit": args.limit, "alphas": args.alphas, "lambdas": list(LAMBDAS), "checks": checks, "cosines": cosines, "heldout_r2": r2,
                "anchor_pairs": len(source), "chosen_across": across, "inner": inner, "chosen_within": within,
                "levers": list(levers), "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """The cosines and the held-out R^2 along lambda, what each rule chose, then the steering of the chosen maps."""
    cosines = document["cosines"]
    lines = ["| λ | teaching pairs | held-out R² (neutral anchors) | cos to own: " + " / ".join(CONCEPTS) +
             " | mean, " + " / ".join(SELECTION) + " | mean, emotions |", "|---|---|---|---|---|---|"]
    for setting, values in cosines.items():
        def mean(names: list[str]) -> str:
            known = [values[c] for c in names if c in values]
            return f"{sum(known) / len(known):.3f}" if known else "–"

        fraction, teaching = setting.split("|")
        mark = "**" if setting == document["chosen_across"] else ""
        lines.append(f"| {mark}{fraction}{mark} | {teaching} | {document['heldout_r2'][setting]:.3f} | "
                     + " / ".join(f"{values[c]:.2f}" if c in values else "–" for c in CONCEPTS)
                     + f" | {mean(SELECTION)} | {mean(EMOTIONS)} |")
    chosen = document["chosen_within"]
    lines += ["", f"{ACROSS}: λ chosen on {', '.join(SELECTION)}: {document['chosen_across'].split('|')[0]}. "
                  f"{WITHIN_LEVER}, chosen for each emotion on the other five (their mean cosine, rebuilt without it):", "",
              "| emotion | chosen λ, teaching | mean cosine of the other five there | cos to own there |", "|---|---|---|---|"]
    for emotion in EMOTIONS:
        fraction, teaching = chosen[emotion].split("|")
        lines.append(f"| {emotion} | {fraction}, {teaching} | {document['inner'][emotion][chosen[emotion]]:.3f} | "
                     f"{cosines[chosen[emotion]][emotion]:.3f} |")
    own = [cosines[chosen[e]][e] for e in EMOTIONS]
    lines.append(f"| **mean** | | | **{sum(own) / len(own):.3f}** |")
    for alpha in document["alphas"] if document["levers"] else ():  # no lever: no steering rows were run
        lines += ["", map_levers.steering_table(document["scores"], document["levers"], document["limit"], alpha)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
