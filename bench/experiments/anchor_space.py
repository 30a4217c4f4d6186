"""The anchor-space route (issue 21, lever 2; Kim & Han 2026, arXiv 2605.09875): write the source
concept vector as a combination of anchor token states and rebuild it in the target from the same
anchors' states.

On the default recipe's centred dense anchor states A (source block 26) and B (target block 14), with
least-squares coefficients (the minimum-norm c with c A = v) the rebuilt vector c B is v (AᵀA)⁻¹ AᵀB,
the default map's transplant. So only other coefficients can differ. Two rules:
- sparse: orthogonal matching pursuit picks k anchor tokens whose source states rebuild v (least-squares
  coefficients on the picked ones); the target vector is the same combination of their target states;
- nearest: the k anchor tokens whose source states have the largest |cosine| to v, each weighted by that
  cosine (a kernel average of their target states).
k in 8, 32, 128, 512. Each rule's k is chosen without the emotions, on the mean cosine to the target's
own vector over sentiment, honesty and toxicity; a rule whose chosen k beats the default map there is
steered on the emotions at alpha 1 (residual units), with the random and the shuffled-label controls
(the shuffled pairs' source vector through the same rule) and the facts.

Run:  python bench/experiments/anchor_space.py --data ../shared/data --json bench/results/anchor_space.json [--limit 40]
"""

from __future__ import annotations

import emotion_steering as emotions
import map_levers
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import EMOTIONS
from map_levers import CONCEPTS, SELECTION

SIZES = (8, 32, 128, 512)
RULES = ["sparse", "nearest"]


class AnchorSpace:
    """Centred anchor token states of both models; rebuilds a source vector in the target."""

    def __init__(self, source, target) -> None:
        self.source = (source.double() - source.double().mean(0)).float()
        self.target = (target.double() - target.double().mean(0)).float()
        self.unit = self.source / self.source.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def sparse(self, vector, sizes=SIZES) -> dict:
        """{k: target vector} by orthogonal matching pursuit with up to max(sizes) anchors."""
        import torch

        vector, picked, rebuilt = vector.double(), [], {}
        residual = vector.clone()
        for step in range(1, max(sizes) + 1):
            scores = (self.unit @ residual.float()).abs()
            scores[picked] = -1.0
            picked.append(int(scores.argmax()))
            basis = self.source[picked].double()
            coefficients = torch.linalg.lstsq(basis.T, vector[:, None]).solution[:, 0]
            residual = vector - basis.T @ coefficients
            if step in sizes:
                rebuilt[step] = coefficients @ self.target[picked].double()
        return rebuilt

    def nearest(self, vector, sizes=SIZES) -> dict:
        """{k: cosine-weighted sum of the target states of the k anchors nearest to ±vector}."""
        cosines = self.unit @ (vector / vector.norm()).float()
        order = cosines.abs().argsort(descending=True)
        return {k: (cosines[order[:k]].double() @ self.target[order[:k]].double()) for k in sizes}

    def rebuild(self, rule: str, vector, size: int):
        return getattr(self, rule)(vector, sizes=(size,))[size]


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False)
    if args is None:
        return

    from lm_eval_contrans.experiments.controls import cosine

    watch = emotions.Stopwatch()
    grid = emotions.grid("anchor_space", args)
    states = map_levers.LeverStates.record(SOURCE, TARGET)
    space = AnchorSpace(states.anchor_source, states.anchor_target)
    watch.log(f"{len(space.source):,} anchor token pairs; checks (cosines, 1 = reproduced): "
        + "; ".join(f"{c} " + "/".join(f"{v:.4f}" for v in check.values()) for c, check in states.checks.items()))

    cosines = {"default map": {c: cosine(states.transplants[c].vector, states.own[c]) for c in CONCEPTS}}
    for concept in CONCEPTS:
        vector = states.transplants[concept].source_vector
        for rule in RULES:
            for size, rebuilt in getattr(space, rule)(vector).items():
                cosines.setdefault(f"{rule}|{size}", {})[concept] = cosine(rebuilt, states.own[concept])
        watch.log(f"{concept}: " + ", ".join(f"{setting} {values[concept]:.3f}" for setting, values in cosines.items()))
    default_score = sum(cosines["default map"][c] for c in SELECTION)
    chosen = {rule: map_levers.choose({s: v for s, v in cosines.items() if s.startswith(rule + "|")}) for rule in RULES}
    steered = [setting for setting in chosen.values() if sum(cosines[setting][c] for c in SELECTION) > default_score]
    watch.log(f"chosen on {', '.join(SELECTION)}: {chosen}; beating the default map there: {steered or 'none'}")

    levers = {setting: (lambda emotion, vector, setting=setting: space.rebuild(setting.split("|")[0], vector, int(setting.split("|")[1])))
              for setting in steered}
    scores = emotions.accuracies(grid.run(map_levers.steering_rows(states, TARGET, levers))) if levers else {}
    document = {"limit": args.limit, "sizes": list(SIZES), "checks": states.checks, "anchor_pairs": len(space.source),
                "cosines": cosines, "chosen": chosen, "levers": list(levers), "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """Cosines to the target's own vectors per rule and k; then the steering of the rules that beat the default map."""
    lines = ["| rule | anchors k | cos to own: " + " / ".join(CONCEPTS) + " | mean, " + " / ".join(SELECTION) + " | mean, emotions |",
             "|---|---|---|---|---|"]
    for setting, values in document["cosines"].items():
        rule, _, size = setting.partition("|")
        mark = "**" if setting in document["chosen"].values() else ""
        lines.append(f"| {rule} | {mark}{size or '–'}{mark} | " + " / ".join(f"{values[c]:.2f}" for c in CONCEPTS)
                     + f" | {sum(values[c] for c in SELECTION) / len(SELECTION):.3f} | {sum(values[c] for c in EMOTIONS) / len(EMOTIONS):.3f} |")
    if not document["levers"]:
        return "\n".join(lines + ["", f"Chosen on {', '.join(SELECTION)} (in bold): neither rule beats the default map there; "
                                      "no steering rows were run."])
    return "\n".join(lines + ["", map_levers.steering_table(document["scores"], document["levers"], document["limit"])])


if __name__ == "__main__":
    main()
