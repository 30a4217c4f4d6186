"""A nonlinear map (issue 21, lever 2): a small MLP on top of the least-squares map, chosen on held-out R^2.

On the default recipe's anchor states (shipped corpus, dense token pairs, source block 26 -> target
block 14) the map is f(x) = (x - mean) W + b + g(x), with W the centred least-squares map and g a
one-hidden-layer MLP (GELU) trained on the residual with Adam, on the same 80 % of the anchor texts the
linear fit uses; the held-out 20 % picks the hidden width and the epoch. Rows whose source or target
state is over 10 times the median norm (about one token a text, the first, carries activations hundreds
of times the others) are left out of training and scoring for both maps.

A nonlinear map has no single image of a difference vector, so the concept is carried pair by pair:
u = mean over the concept's pairs of f(positive state) - f(negative state); for the linear map this is
v W, today's transplant. Per emotion: cosine of u to the target's own vector, and steering success
and the facts on the dev data at the default alpha (1, residual units) with u and with a random vector
of its norm.

Run:  python bench/experiments/mlp_map.py --data ../shared/data --json bench/results/mlp_map.json [--limit 40]
"""

from __future__ import annotations

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import EMOTIONS, FACTS, emotion_task
WIDTHS = (512, 2048)
EPOCHS = 40


class ResidualMLP:
    """f(x) = (x - source_mean) W + target_mean + g(x); g sees standardized inputs."""

    def __init__(self, source, target, train, width: int, seed: int = 0) -> None:
        import torch

        self.source_mean, self.target_mean = source[train].double().mean(0), target[train].double().mean(0)
        centred = (source[train].double() - self.source_mean)
        self.weight = torch.linalg.lstsq(centred, target[train].double() - self.target_mean).solution
        self.scale = centred.std(0).clamp_min(1e-6)
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(source.shape[1], width), torch.nn.GELU(), torch.nn.Linear(width, target.shape[1]))
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)  # starts as the linear map

    def linear(self, x):
        return ((x.double() - self.source_mean) @ self.weight + self.target_mean).float()

    def __call__(self, x):
        return self.linear(x) + self.net(((x.double() - self.source_mean) / self.scale).float())

    def train_epoch(self, source, target, rows, optimizer, batch: int = 1024) -> None:
        import torch

        residual_target = target[rows] - self.linear(source[rows])
        inputs = ((source[rows].double() - self.source_mean) / self.scale).float()
        for chunk in torch.randperm(len(rows)).split(batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(self.net(inputs[chunk]), residual_target[chunk])
            loss.backward()
            optimizer.step()


def fit_mlp(source, target, groups, log) -> tuple[ResidualMLP, dict]:
    """The MLP (width, epoch) with the best held-out R^2, refitted on every row; the scores of each."""
    import torch

    from lm_eval_contrans.reformulate import heldout_split, r_squared

    train, test = heldout_split(groups, seed=0)
    scores, best = {}, (None, -1.0, 0)
    for width in WIDTHS:
        model = ResidualMLP(source, target, train, width)
        with torch.no_grad():
            scores[f"linear (width {width})"] = r_squared(model.linear(source[test]), target[test])
        optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
        for epoch in range(1, EPOCHS + 1):
            model.train_epoch(source, target, train, optimizer)
            with torch.no_grad():
                score = r_squared(model(source[test]), target[test])
            scores[f"width {width}, epoch {epoch}"] = score
            log(f"MLP width {width} epoch {epoch}: held-out R^2 {score:.4f}")
            if score > best[1]:
                best = (width, score, epoch)
    width, _, epochs = best
    everything = torch.arange(len(source))
    final = ResidualMLP(source, target, everything, width)
    optimizer = torch.optim.Adam(final.net.parameters(), lr=1e-3)
    for _ in range(epochs):
        final.train_epoch(source, target, everything, optimizer)
    return final, {"scores": scores, "width": width, "epochs": epochs, "heldout_r2": best[1],
                   "linear_heldout_r2": scores[f"linear (width {width})"], "train_rows": len(train), "test_rows": len(test)}


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False)
    if args is None:
        return

    import dataclasses

    import torch

    from lm_eval_contrans.activations import last_token_states
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, random_control, target_own_vector
    from lm_eval_contrans.experiments.grid import GridRow
    from states import paired_token_states
    from lm_eval_contrans.loading import free_model, load_model
    from lm_eval_contrans.pipeline import build_transplant

    watch = emotions.Stopwatch()
    grid = emotions.grid("mlp_map", args)
    transplants = {emotion: build_transplant(SOURCE, TARGET, emotion, device="cpu") for emotion in EMOTIONS}
    first = transplants[EMOTIONS[0]]
    assert all((t.source_layer, t.target_layer) == (first.source_layer, first.target_layer) for t in transplants.values())
    anchor_texts, _ = load_anchor_texts(None)
    source, target, groups = paired_token_states(first, anchor_texts)
    norms = source.norm(dim=1), target.norm(dim=1)
    typical = (norms[0] < 10 * norms[0].median()) & (norms[1] < 10 * norms[1].median())
    watch.log(f"{len(source):,} anchor pairs, {int((~typical).sum()):,} left out as outliers")
    torch.manual_seed(0)
    mlp, fit = fit_mlp(source[typical], target[typical], groups[typical], watch.log)

    model, tokenizer = load_model(SOURCE, argument="source", device="cpu")
    pair_states = {}
    for emotion in EMOTIONS:
        concept = load_concept_set(emotion)
        states = last_token_states(model, tokenizer, [*concept.positives, *concept.negatives], [first.source_layer])[first.source_layer]
        pair_states[emotion] = (states[:len(concept)], states[len(concept):])
    free_model(model)

    rows = [emotions.base_row(TARGET, EMOTIONS)]
    vectors = {}
    for emotion, transplant in transplants.items():
        positive, negative = pair_states[emotion]
        with torch.no_grad():
            carried = {"linear": (mlp.linear(positive) - mlp.linear(negative)).mean(0), "MLP": (mlp(positive) - mlp(negative)).mean(0)}
        own = target_own_vector(transplant, load_concept_set(emotion), anchor_texts, device="cpu")
        vectors[emotion] = {"cos_linear_to_transplant": cosine(carried["linear"], transplant.vector),
                            "cos_mlp_to_linear": cosine(carried["MLP"], carried["linear"]),
                            **{f"cos_{kind}_to_own": cosine(vector, own) for kind, vector in carried.items()}}
        watch.log(f"{emotion}: " + ", ".join(f"{key} {value:.3f}" for key, value in vectors[emotion].items()))
        task = emotion_task(emotion)
        for kind, vector in carried.items():
            # where the default transplant steers, in its unit: the map that carried it is this one, not the transplant's
            steered = dataclasses.replace(transplant.direction, vector=vector.float(), origin={"map": kind})
            rows += [GridRow(f"{kind}|{emotion}|transplanted", "contrans", TARGET, steered, 1.0, tasks=(task, FACTS)),
                     GridRow(f"{kind}|{emotion}|random", "random", TARGET, random_control(steered, seed=0), 1.0, tasks=(task,))]
    scores = emotions.accuracies(grid.run(rows))
    document = {"limit": args.limit, "fit": fit, "outliers_left_out": int((~typical).sum()), "pairs": len(source),
                "vectors": vectors, "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    fit, scores = document["fit"], document["scores"]
    lines = [f"Held-out R² (20 % of the anchor texts, {fit['test_rows']:,} token pairs; {document['outliers_left_out']:,} outlier rows "
             f"of {document['pairs']:,} left out): linear {fit['linear_heldout_r2']:.4f}, MLP (width {fit['width']}, "
             f"{fit['epochs']} epochs) {fit['heldout_r2']:.4f}. Steering at α = 1 ({document['limit']} dev scenarios per emotion; "
             f"base facts {scores['base'][FACTS]['acc,none']:.3f}).", "",
             "| emotion | cos(MLP, linear) | cos to own: linear | MLP | base | linear | random | facts | MLP | random | facts |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for emotion, cosines in document["vectors"].items():
        task = emotion_task(emotion)
        cells = [f"{emotions.cell(scores, f'{kind}|{emotion}|transplanted', task)} | {emotions.cell(scores, f'{kind}|{emotion}|random', task)} | "
                 f"{scores[f'{kind}|{emotion}|transplanted'][FACTS]['acc,none']:.3f}" for kind in ("linear", "MLP")]
        lines.append(f"| {emotion} | {cosines['cos_mlp_to_linear']:.3f} | {cosines['cos_linear_to_own']:.3f} | {cosines['cos_MLP_to_own']:.3f} | "
                     f"{emotions.cell(scores, 'base', task)} | " + " | ".join(cells) + " |")
    reached = {kind: emotions.steered(scores, {e: f"{kind}|{e}|transplanted" for e in document["vectors"]}) for kind in ("linear", "MLP")}
    mean = {kind: sum(c[f"cos_{kind}_to_own"] for c in document["vectors"].values()) / len(document["vectors"]) for kind in ("linear", "MLP")}
    lines.append(f"| **mean / ≥ 0.8** | | **{mean['linear']:.3f}** | **{mean['MLP']:.3f}** | | **{reached['linear']} of 6** | | | "
                 f"**{reached['MLP']} of 6** | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
