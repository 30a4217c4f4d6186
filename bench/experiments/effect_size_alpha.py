"""An alpha that transplants the effect size (issue 21, lever 3), measured before it becomes an option.

The concept separates the source's states along its direction v by d = |v| / s_source standard
deviations, where s_source is the spread of the source's anchor states projected on v (|v| is the
mean pair difference along v). The effect-size steer adds the transplanted direction u = v·W with the
norm d · s_target, s_target being the spread of the target's anchor states projected on u: the target
then moves along u by as many of its own standard deviations as the pairs differ in the source.

Two spreads: the plain standard deviation, and a robust one (1.4826 × the median absolute deviation),
since a few tokens per text (the first one above all) carry activations hundreds of times the others.
Spreads are read on the shipped corpus's anchor tokens paired between the two models (the rows the
map is fitted on). For each emotion: d, the two effect-size norms in residual alpha units (alpha = 1
adds 0.1 × the target block's median residual norm), and on the dev data the steering success and the facts with the
transplanted vector and a random vector of the same norm at alpha = 1 and at each effect-size alpha.

Run:  python bench/experiments/effect_size_alpha.py --data ../shared/data --json bench/results/effect_size_alpha.json [--limit 40]
"""

from __future__ import annotations

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import FACTS, emotion_task

SPREADS = ("std", "robust")
SETTINGS = ("α 1", "effect size (std)", "effect size (robust)")


def spreads(values) -> dict[str, float]:
    """Plain and robust (1.4826 x median absolute deviation) standard deviation of a 1-d tensor."""
    values = values.double()
    return {"std": float(values.std()), "robust": float(1.4826 * (values - values.median()).abs().median())}


def effect_size(transplant) -> dict:
    """d in each spread, and the effect-size norm of the transplanted direction, as a residual alpha
    (on the anchor tokens the map is fitted on: those that end at the same character in both models)."""
    from lm_eval_contrans.anchors import load_anchor_texts
    from states import paired_token_states
    from lm_eval_contrans.transplant import ALPHA_UNIT_FRACTION

    source, target, _ = paired_token_states(transplant, load_anchor_texts(None)[0])
    v, u = transplant.source_vector.double(), transplant.vector.double()
    source_spread, target_spread = spreads(source.double() @ (v / v.norm())), spreads(target.double() @ (u / u.norm()))
    unit = ALPHA_UNIT_FRACTION * transplant.residual_norm
    return {kind: {"d": float(v.norm()) / source_spread[kind], "alpha": float(v.norm()) / source_spread[kind] * target_spread[kind] / unit}
            for kind in SPREADS}


def main() -> None:
    args = emotions.parse_arguments(__doc__, render)
    if args is None:
        return

    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import GridRow
    from lm_eval_contrans.pipeline import build_transplant

    watch = emotions.Stopwatch()
    grid = emotions.grid("effect_size_alpha", args)
    rows = [emotions.base_row(TARGET, args.emotions)]
    effects = {}
    for emotion in args.emotions:
        transplant = build_transplant(SOURCE, TARGET, emotion, device="cpu")
        effects[emotion] = effect_size(transplant)
        watch.log(f"{emotion}: " + ", ".join(
            f"{kind} d {e['d']:.2f} alpha {e['alpha']:.2f}" for kind, e in effects[emotion].items()))
        alphas = dict(zip(SETTINGS, (1.0, *(effects[emotion][kind]["alpha"] for kind in SPREADS))))
        for setting, alpha in alphas.items():
            rows += [GridRow(f"{setting}|{emotion}|transplanted", "contrans", TARGET, transplant, alpha, tasks=(emotion_task(emotion), FACTS)),
                     GridRow(f"{setting}|{emotion}|random", "random", TARGET, random_control(transplant, seed=0), alpha,
                             tasks=(emotion_task(emotion),))]
    document = {"limit": args.limit, "emotions": args.emotions, "effects": effects, "scores": emotions.accuracies(grid.run(rows)),
                "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    scores, effects = document["scores"], document["effects"]
    lines = [f"Steering success ({document['limit']} dev scenarios per emotion; base facts "
             f"{scores['base'][FACTS]['acc,none']:.3f}); d = source pair separation in source standard deviations; "
             "α = the effect-size norm in residual units.", "",
             "| emotion | d (std) | α (std) | d (robust) | α (robust) | base | " +
             " | ".join(f"{s} transplanted | {s} random | {s} facts" for s in SETTINGS) + " |",
             "|---|---|---|---|---|---|" + "---|" * 3 * len(SETTINGS)]
    for emotion in document["emotions"]:
        task, effect = emotion_task(emotion), effects[emotion]
        cells = [f"{emotions.cell(scores, f'{s}|{emotion}|transplanted', task)} | {emotions.cell(scores, f'{s}|{emotion}|random', task)} | "
                 f"{scores[f'{s}|{emotion}|transplanted'][FACTS]['acc,none']:.3f}" for s in SETTINGS]
        lines.append(f"| {emotion} | {effect['std']['d']:.2f} | {effect['std']['alpha']:.2f} | {effect['robust']['d']:.2f} | "
                     f"{effect['robust']['alpha']:.2f} | {emotions.cell(scores, 'base', task)} | " + " | ".join(cells) + " |")
    reached = {s: emotions.steered(scores, {e: f"{s}|{e}|transplanted" for e in document["emotions"]}) for s in SETTINGS}
    lines.append("| **≥ 0.8** | | | | | | " + " | ".join(f"**{reached[s]} of {len(document['emotions'])}** | |" for s in SETTINGS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
