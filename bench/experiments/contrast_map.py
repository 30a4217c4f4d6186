"""Contrast rows in the map (issue 21, lever 2): fit the map on the neutral anchors and on the
(positive - negative) state differences of other concepts' pairs.

The default map is fitted on neutral anchor tokens, whose variance is mostly position and token
identity; a concept vector is a difference between two kinds of text, in directions that fit weighs
little. Here W minimises

    |(S - mean S) W - (T - mean T)|^2 + w |D_s W - D_t|^2

with S, T the default recipe's anchor token states (source block 26, target block 14), D_s, D_t the
last-token state differences of teaching pairs in the two models (the rows a concept vector is the
mean of), and w set so that the contrast rows carry a fraction lambda of the source sum of squares
(lambda 0: the default map).

Teaching pairs never hold a text of the concept's own set (either side), nor its labels:
- `other sets`: concepts of other kinds. For an emotion, sentiment, honesty and toxicity (the six
  emotion sets share their scenarios); for sentiment, honesty or toxicity, every other set.
- `other emotions` (emotions only): the other emotion sets' pairs in which neither side is a text of
  the emotion's set (its 25 scenarios, and the 25 scenarios of other emotions its pairs contrast them
  with): contrasts between the other five emotions, on the other 100 scenarios;
- `other sets + other emotions`: both.

Choosing without the concept it is used for:
- `other sets`: lambda on the mean cosine to the target's own vector over sentiment, honesty and
  toxicity (each taught by the other sets);
- an emotion's `other emotions` maps: for each emotion E, the teaching and lambda (0 among them: the
  default map) whose maps, rebuilt for each other emotion F without a text of E's or F's set, give the best
  mean cosine over the five F. One rule for every emotion; what it picks can differ between them.
Each emotion is steered on the dev data at the default alpha (1, residual units; --alphas for more) with the default map
and with each chosen map (if not lambda 0), beside the random vector (alpha is in residual units, so
one random direction serves every map) and the shuffled-label control through the same map; the facts
under each transplanted row.

Run:  python bench/experiments/contrast_map.py --data ../shared/data --json bench/results/contrast_map.json [--limit 40] [--alphas 1 2]
"""

from __future__ import annotations

from lm_eval_contrans.experiments import emotion_steering as emotions
from lm_eval_contrans.experiments import map_levers
from lm_eval_contrans.experiments.data import SOURCE, TARGET, write_json
from lm_eval_contrans.experiments.emotion_steering import EMOTIONS
from lm_eval_contrans.experiments.map_levers import CONCEPTS, SELECTION

LAMBDAS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
ACROSS, WITHIN, BOTH = "other sets", "other emotions", "other sets + other emotions"
TEACHINGS = [ACROSS, WITHIN, BOTH]
WITHIN_LEVER = "contrasts of the other emotions"


def teaching_pairs(concept: str, teaching: str, pairs: dict, also_without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(positive, negative) texts that may teach the map for `concept` (see the module docstring); with
    `also_without`, none of those emotions' sets' texts either."""
    if concept not in EMOTIONS:
        return [pair for name, concept_pairs in pairs.items() if name != concept for pair in concept_pairs]
    taught = [pair for name in SELECTION for pair in pairs[name]] if teaching in (ACROSS, BOTH) else []
    if teaching in (WITHIN, BOTH):
        left_out = {concept, *also_without}
        texts = {text for name in left_out for pair in pairs[name] for text in pair}
        taught += [(p, n) for name in EMOTIONS if name not in left_out for p, n in pairs[name] if p not in texts and n not in texts]
    return taught


class ContrastFit:
    """Centred least squares on anchor rows plus weighted contrast rows, from their sums."""

    def __init__(self, source, target) -> None:
        x, y = source.double(), target.double()
        self.source_mean, self.target_mean = x.mean(0), y.mean(0)
        x, y = x - self.source_mean, y - self.target_mean
        self.xx, self.xy = x.T @ x, x.T @ y

    def weight(self, source_differences=None, target_differences=None, fraction: float = 0.0):
        """W with the contrast rows carrying `fraction` of the anchors' source sum of squares."""
        import torch

        gram, cross = self.xx.clone(), self.xy.clone()
        if fraction > 0:
            ds, dt = source_differences.double(), target_differences.double()
            scale = fraction * float(self.xx.trace()) / float((ds * ds).sum())
            gram += scale * ds.T @ ds
            cross += scale * ds.T @ dt
        gram.diagonal().add_(1e-9 * gram.diagonal().mean())  # the default fit's vanishing ridge
        return torch.linalg.solve(gram, cross)


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False,
                                      more=lambda parser: parser.add_argument("--alphas", type=float, nargs="+", default=[1.0],
                                                                              help="alphas of the steering rows (residual units)"))
    if args is None:
        return

    from lm_eval_contrans.alignment import heldout_split, r_squared
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

    def weight(concept: str, teaching: str, fraction: float, also_without: tuple[str, ...] = (), fit: str = "all"):
        taught = teaching_pairs(concept, teaching, states.pairs, also_without)
        if not taught:  # two emotions' sets can cover every scenario between them: then nothing teaches
            return fits[fit].weight()
        return fits[fit].weight(states.differences("source", taught), states.differences("target", taught), fraction)

    def carried_cosine(concept: str, map_weight) -> float:
        return cosine(states.transplants[concept].source_vector.double() @ map_weight, states.own[concept])

    cosines, r2 = {}, {}
    for fraction in LAMBDAS:
        for teaching in TEACHINGS:
            setting = f"{fraction:g}|{teaching}"
            cosines[setting] = {c: carried_cosine(c, weight(c, teaching, fraction)) for c in (CONCEPTS if teaching == ACROSS else EMOTIONS)}
            fit = fits["train"]  # what the teaching costs on neutral text (the first emotion's teaching set)
            predicted = (source[test].double() - fit.source_mean) @ weight(EMOTIONS[0], teaching, fraction, fit="train") + fit.target_mean
            r2[setting] = r_squared(predicted, target[test].double())
            watch.log(f"{setting}: " + ", ".join(f"{c} {v:.3f}" for c, v in cosines[setting].items()))
    across = map_levers.choose({setting: values for setting, values in cosines.items() if setting.endswith("|" + ACROSS)})
    watch.log(f"{ACROSS}: lambda chosen on {', '.join(SELECTION)}: {across.split('|')[0]}")

    # each emotion's within-family setting, from the other five emotions rebuilt without it
    inner = {emotion: {f"{fraction:g}|{teaching}": sum(carried_cosine(other, weight(other, teaching, fraction, (emotion,)))
                                                       for other in EMOTIONS if other != emotion) / (len(EMOTIONS) - 1)
                       for fraction in LAMBDAS for teaching in (WITHIN, BOTH)} for emotion in EMOTIONS}
    within = {emotion: max(scores, key=scores.get) for emotion, scores in inner.items()}
    watch.log(f"{WITHIN_LEVER}: chosen per emotion on the other five: {within}")

    levers = {}
    if float(across.split("|")[0]) > 0:  # lambda 0 is the default map: nothing new to steer
        levers[f"{ACROSS}, λ {across.split('|')[0]}"] = lambda emotion, vector: vector @ weight(emotion, ACROSS, float(across.split("|")[0]))
    if any(float(setting.split("|")[0]) > 0 for setting in within.values()):
        def within_map(emotion: str, vector):
            fraction, teaching = within[emotion].split("|")
            return vector @ weight(emotion, teaching, float(fraction))
        levers[WITHIN_LEVER] = within_map
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
