"""An alpha in units of disruption (issue 21, lever 3, another alpha unit): the same KL divergence
from the unsteered target on neutral text for every vector, chosen without the emotions.

alpha = 1 in residual units is a vector of norm 0.1 x the block's median residual norm, whatever its
direction; directions differ in how much a push of that norm changes what the model predicts (a random
direction at alpha 1 costs 24 points of facts, the transplants about none). Here each vector is
instead pushed until the target's next-token distributions on neutral anchor text (a seeded sample of
the shipped corpus) move by a budget B: the mean over tokens of KL(unsteered || steered), in nats.
The alpha that reaches B is read off KL measured at a ladder of alphas (log-log interpolation).

B is chosen on sentiment, honesty and toxicity alone: the largest budget of the ladder at which each of
their transplants keeps the facts within 2 points of the base (the issue's facts budget). The six
emotions are then steered at B, each against a random direction and its shuffled-label transplant, both
pushed to the same B (a control at the same disruption, not the same norm), with the facts under each
transplant.

Run:  python bench/experiments/kl_alpha.py --data ../shared/data --json bench/results/kl_alpha.json [--limit 40]
"""

from __future__ import annotations

import math

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import EMOTIONS, FACTS, emotion_task

SELECTION = ["sentiment", "honesty", "toxicity"]
BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # nats per token
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # residual units, where KL is measured
TEXTS, TOKENS = 16, 32


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False)
    if args is None:
        return

    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import random_control, shuffled_labels
    from lm_eval_contrans.experiments.grid import GridRow
    from lm_eval_contrans.pipeline import build_transplant

    watch = emotions.Stopwatch()
    grid = emotions.grid("kl_alpha", args)
    vectors = {concept: build_transplant(SOURCE, TARGET, concept, device="cpu") for concept in SELECTION + EMOTIONS}
    for emotion in EMOTIONS:
        vectors[f"{emotion}|random"] = random_control(vectors[emotion], seed=0)
        vectors[f"{emotion}|shuffled"] = build_transplant(SOURCE, TARGET, shuffled_labels(load_concept_set(emotion)), device="cpu")
    curves = kl_curves(vectors)
    watch.log("KL at alpha 1 (nats per token): " + ", ".join(f"{name} {curve[ALPHAS.index(1.0)]:.4f}" for name, curve in curves.items()))

    base = emotions.base_row(TARGET, EMOTIONS)
    selection = [GridRow(f"{concept}|B={budget:g}", "contrans", TARGET, vectors[concept], alpha_at(curves[concept], budget), tasks=(FACTS,))
                 for concept in SELECTION for budget in BUDGETS]
    scores = emotions.accuracies(grid.run([base, *selection]))
    floor = scores["base"][FACTS]["acc,none"] - 0.02
    kept = [budget for budget in BUDGETS if all(scores[f"{c}|B={budget:g}"][FACTS]["acc,none"] >= floor for c in SELECTION)]
    chosen = max(kept) if kept else min(BUDGETS)
    watch.log(f"budgets keeping the facts within 2 points on {', '.join(SELECTION)}: {kept}; chosen B = {chosen:g}")

    rows = [base]
    for emotion in EMOTIONS:
        task = emotion_task(emotion)
        for kind, name in (("transplanted", emotion), ("random", f"{emotion}|random"), ("shuffled", f"{emotion}|shuffled")):
            rows.append(GridRow(f"{emotion}|{kind}|B={chosen:g}", "contrans" if kind == "transplanted" else kind, TARGET, vectors[name],
                                alpha_at(curves[name], chosen), tasks=(task, FACTS) if kind == "transplanted" else (task,)))
    scores.update(emotions.accuracies(grid.run(rows)))
    document = {"limit": args.limit, "budgets": list(BUDGETS), "alphas": list(ALPHAS), "texts": TEXTS, "tokens": TOKENS,
                "curves": curves, "chosen": chosen, "kept": kept, "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def kl_curves(vectors: dict) -> dict[str, list[float]]:
    """Each vector's mean KL(unsteered || steered) per token on the neutral sample, at each of ALPHAS."""
    import random

    import torch
    from tqdm.auto import tqdm

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.loading import free_model, load_model
    from lm_eval_contrans.provenance import directions_of

    texts = random.Random(0).sample(load_anchor_texts(None)[0], TEXTS)
    model, tokenizer = load_model(TARGET, argument="target", device="cpu")
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=TOKENS)
    mask = batch["attention_mask"].bool()

    def log_probs():
        with torch.no_grad():
            return torch.log_softmax(model(**batch).logits.float(), dim=-1)[mask]

    plain = log_probs()
    curves, measured = {}, []  # measured: (block, vector alpha 1 adds, curve)
    for name, given in tqdm(vectors.items(), desc="KL along alpha", unit="vector"):
        transplant, = directions_of([given])  # a transplant's direction, or a control's
        pushed = transplant.steering_vector()
        # in residual units the six emotions' random controls are one direction at one norm, equal up to
        # float rounding: its curve is measured once
        curve = next((curve for block, vector, curve in measured
                      if block == transplant.block and torch.allclose(vector, pushed, rtol=1e-5, atol=0)), None)
        if curve is None:
            curve = []
            for alpha in ALPHAS:
                with transplant.apply(model, alpha):
                    steered = log_probs()
                curve.append(float((plain.exp() * (plain - steered)).sum(-1).mean()))
            measured.append((transplant.block, pushed, curve))
        curves[name] = curve
    free_model(model)
    return curves


def alpha_at(curve: list[float], budget: float) -> float:
    """The alpha (residual units) at which a KL curve reaches `budget`: log-log interpolation between
    the measured alphas, clamped to their range."""
    points = [(math.log(alpha), math.log(max(kl, 1e-12))) for alpha, kl in zip(ALPHAS, curve)]
    target = math.log(budget)
    if target <= points[0][1]:
        return ALPHAS[0]
    for (a0, k0), (a1, k1) in zip(points, points[1:]):
        if k0 <= target <= k1 and k1 > k0:
            return round(math.exp(a0 + (target - k0) * (a1 - a0) / (k1 - k0)), 4)
    return ALPHAS[-1]


def render(document: dict) -> str:
    """KL at each alpha, the selection of B, then the emotions at B against both controls."""
    curves, scores, chosen = document["curves"], document["scores"], document["chosen"]
    lines = ["Mean KL(unsteered || steered) per token on the neutral sample, nats, at α (residual units):", "",
             "| vector | " + " | ".join(f"α {a:g}" for a in document["alphas"]) + f" | α at B = {chosen:g} |",
             "|---|" + "---|" * (len(document["alphas"]) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{kl:.4f}" for kl in curve) + f" | {alpha_at(curve, chosen):.2f} |" for name, curve in curves.items()]
    base_facts = scores["base"][FACTS]["acc,none"]
    lines += ["", f"Facts at each budget B (base {base_facts:.3f}; kept: within 2 points for every one of {', '.join(SELECTION)}):", "",
              "| B (nats) | " + " | ".join(SELECTION) + " | kept |", "|---|" + "---|" * (len(SELECTION) + 1)]
    for budget in document["budgets"]:
        mark = "**" if budget == chosen else ""
        lines.append(f"| {mark}{budget:g}{mark} | " + " | ".join(f"{scores[f'{c}|B={budget:g}'][FACTS]['acc,none']:.3f} "
                                                                 f"(α {alpha_at(curves[c], budget):.2f})" for c in SELECTION)
                     + f" | {'yes' if budget in document['kept'] else 'no'} |")
    lines += ["", f"Steering success at B = {chosen:g} ({document['limit']} dev scenarios per emotion; each vector at its own α):", "",
              "| emotion | base | transplanted | random | shuffled labels | facts (transplanted) |", "|---|---|---|---|---|---|"]
    beating = 0
    for emotion in EMOTIONS:
        task = emotion_task(emotion)
        names = [f"{emotion}|{kind}|B={chosen:g}" for kind in ("transplanted", "random", "shuffled")]
        cells = [emotions.cell(scores, name, task) + f" (α {alpha_at(curves[vector], chosen):.2f})"
                 for name, vector in zip(names, (emotion, f"{emotion}|random", f"{emotion}|shuffled"))]
        lines.append(f"| {emotion} | {emotions.cell(scores, 'base', task)} | " + " | ".join(cells)
                     + f" | {scores[names[0]][FACTS]['acc,none']:.3f} |")
        beating += scores[names[0]][task]["acc,none"] >= 0.8 and emotions.above_controls(scores, names[0], names[1:], task, document["limit"])
    reached = emotions.steered(scores, {e: f"{e}|transplanted|B={chosen:g}" for e in EMOTIONS})
    lines.append(f"| **≥ 0.8** | | **{reached} of 6** ({beating} above both controls) | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
