"""Is the concept there to be moved? Each emotion's vector steering the source it was refined in,
beside its transplant steering the target (issue 21).

ConTrans assumes the small aligned source holds the concept. For each emotion, on the dev scenarios:
- the source vector the default build transplants (at the source block it chose) added to the source
  itself at that block, in the source block's residual units (alpha 1 = norm 0.1 x the block's median
  residual norm, the unit the target's alpha uses), against a random direction and the shuffled-label
  vector at the same norm; the facts under it;
- the same concept refined and added at other source blocks;
- transplants into the default target block from the default source block and from other source
  blocks, each with its shuffled-label transplant, the facts, held-out R^2 and the cosine to the
  target's own vector; and the target's own vector at equal norm (what a perfect map would deliver).
A source-side vector is built by the default pipeline with the source as both models at one block, so
the map is the identity on the anchors (its cosine to the source vector is printed) and alpha gets its
unit from the same code as every transplant.

Run:  python bench/experiments/source_steering.py --data ../shared/data --json bench/results/source_steering.json
      (about 8 min on 2 cores with the anchor states cached)
"""

from __future__ import annotations

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, write_json
from emotion_steering import FACTS, emotion_task

SOURCE_ALPHAS = (1.0, 2.0, 5.0)
SOURCE_BLOCKS = (15, 19, 22, 28)  # depth 0.5; 0.63, 0.73, 0.93 within the window the default chooses from (19-28)
TARGET_ALPHAS = (1.0, 2.0)
TRANSPLANTED_FROM = (22, 28)  # besides the block the default chose


def main() -> None:
    args = emotions.parse_arguments(__doc__, render)
    if args is None:
        return

    import dataclasses

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, own_control, random_control, shuffled_labels, target_own_vector
    from lm_eval_contrans.experiments.grid import GridRow
    from lm_eval_contrans.pipeline import build_transplant

    watch = emotions.Stopwatch()
    grid = emotions.grid("source_steering", args)
    anchor_texts, _ = load_anchor_texts(None)
    # rows by model, so that the grid loads each model once
    source_rows = [dataclasses.replace(emotions.base_row(SOURCE, args.emotions), name="source|base")]
    target_rows = [dataclasses.replace(emotions.base_row(TARGET, args.emotions), name="target|base")]
    vectors = {}
    for emotion in args.emotions:
        concept, task = load_concept_set(emotion), emotion_task(emotion)
        default = build_transplant(SOURCE, TARGET, concept, device="cpu")
        chosen = default.source_layer

        def in_source(pairs, block=chosen):
            return build_transplant(SOURCE, SOURCE, pairs, device="cpu", source_layer=block, target_layer=block)

        itself = in_source(concept)
        source_rows += [GridRow(f"source|{emotion}|own α={alpha:g}", "own", SOURCE, itself, alpha, tasks=(task, FACTS))
                        for alpha in SOURCE_ALPHAS]
        source_rows += [GridRow(f"source|{emotion}|random α=1", "random", SOURCE, random_control(itself), 1.0, tasks=(task,)),
                        GridRow(f"source|{emotion}|shuffled α=1", "shuffled", SOURCE, in_source(shuffled_labels(concept)), 1.0,
                                tasks=(task,))]
        source_rows += [GridRow(f"source|{emotion}|own at block {block} α={alpha:g}", "own", SOURCE, in_source(concept, block),
                                alpha, tasks=(task,)) for block in SOURCE_BLOCKS for alpha in SOURCE_ALPHAS]

        own = target_own_vector(default, concept, anchor_texts, device="cpu")
        target_rows.append(GridRow(f"target|{emotion}|own α=1", "own", TARGET, own_control(default, own), 1.0, tasks=(task,)))
        transplants = {}
        for block in (chosen, *TRANSPLANTED_FROM):
            moved = build_transplant(SOURCE, TARGET, concept, device="cpu", source_layer=block)
            transplants[str(block)] = {"heldout_r2": moved.heldout_r2, "cosine_to_own": cosine(moved.vector, own)}
            name = f"target|{emotion}|from block {block}"
            target_rows += [GridRow(f"{name} α={alpha:g}", "contrans", TARGET, moved, alpha, tasks=(task, FACTS))
                            for alpha in TARGET_ALPHAS]
            target_rows.append(GridRow(f"{name} shuffled α=1", "shuffled", TARGET,
                                       build_transplant(SOURCE, TARGET, shuffled_labels(concept), device="cpu", source_layer=block),
                                       1.0, tasks=(task,)))
        vectors[emotion] = {"source_block": chosen, "target_block": default.target_layer,
                            "identity_map_cosine": cosine(itself.vector, default.source_vector), "transplanted": transplants}
        watch.log(f"built {emotion}: source block {chosen} (identity map cosine {vectors[emotion]['identity_map_cosine']:.4f}), "
                  f"target block {default.target_layer}")
    document = {"limit": args.limit, "emotions": args.emotions, "source_alphas": list(SOURCE_ALPHAS),
                "source_blocks": list(SOURCE_BLOCKS), "target_alphas": list(TARGET_ALPHAS),
                "transplanted_from": list(TRANSPLANTED_FROM), "vectors": vectors,
                "scores": emotions.accuracies(grid.run(source_rows + target_rows)), "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """The docs/RESULTS.md tables, from what `main` measured."""
    scores, names = document["scores"], document["emotions"]
    acc = lambda row, task: scores[row][task]["acc,none"]  # noqa: E731
    alphas = [f"{alpha:g}" for alpha in document["source_alphas"]]
    chosen = {name: document["vectors"][name]["source_block"] for name in names}
    blocks = sorted({(v["source_block"], v["target_block"]) for v in document["vectors"].values()})
    lines = [f"Steering success ({document['limit']} dev scenarios per emotion); blocks chosen by the default build (source → target): "
             + ", ".join(f"{s} → {t}" for s, t in blocks) + f"; facts: source base {acc('source|base', FACTS):.3f}, "
             f"target base {acc('target|base', FACTS):.3f}.", "",
             "| emotion | source: base | " + " | ".join(f"own α={a}" for a in alphas) + " | random α=1 | shuffled α=1 "
             "| facts (own α=1) | target: base | transplanted α=1 | target's own α=1 |",
             "|---|---|" + "---|" * len(alphas) + "---|---|---|---|---|---|"]
    for emotion in names:
        task, s = emotion_task(emotion), f"source|{emotion}"
        cells = [emotions.cell(scores, row, task) for row in ("source|base", *(f"{s}|own α={a}" for a in alphas),
                                                              f"{s}|random α=1", f"{s}|shuffled α=1")]
        cells.append(f"{acc(f'{s}|own α=1', FACTS):.3f}")
        cells += [emotions.cell(scores, row, task) for row in ("target|base", f"target|{emotion}|from block {chosen[emotion]} α=1",
                                                               f"target|{emotion}|own α=1")]
        lines.append(f"| {emotion} | " + " | ".join(cells) + " |")
    counts = [emotions.steered(scores, {e: f"source|{e}|own α={a}" for e in names}) for a in alphas]
    counts += [emotions.steered(scores, {e: f"target|{e}|from block {chosen[e]} α=1" for e in names}),
               emotions.steered(scores, {e: f"target|{e}|own α=1" for e in names})]
    bold = [f"**{count} of {len(names)}**" for count in counts]
    lines.append("| **≥ 0.8** | | " + " | ".join(bold[:len(alphas)]) + " | | | | | " + " | ".join(bold[len(alphas):]) + " |")
    above = [e for e in names if emotions.above_controls(scores, f"source|{e}|own α=1", [f"source|{e}|random α=1", f"source|{e}|shuffled α=1"],
                                                         emotion_task(e), document["limit"])]
    lines += ["", f"In the source at α = 1, above both of its controls (≥ 2 standard errors): {', '.join(above) or 'none'}.", "",
              f"The source's own vector refined and added at other source blocks (success at α = {' / '.join(alphas)}):", "",
              "| emotion | " + " | ".join(f"block {b}" for b in document["source_blocks"]) + " | the default's block |",
              "|---|" + "---|" * (len(document["source_blocks"]) + 1)]
    for emotion in names:
        task = emotion_task(emotion)
        ladder = lambda row: " / ".join(f"{acc(f'{row} α={a}', task):.2f}" for a in alphas)  # noqa: E731
        lines.append(f"| {emotion} | " + " | ".join(ladder(f"source|{emotion}|own at block {b}") for b in document["source_blocks"])
                     + f" | {ladder(f'source|{emotion}|own')} ({chosen[emotion]}) |")
    target_alphas = [f"{alpha:g}" for alpha in document["target_alphas"]]
    lines += ["", f"Transplanted into the default target block from the default's source block and from others (success at "
              f"α = {' / '.join(target_alphas)}; the shuffled-label transplant from the same block at α = 1; the facts at α = 1; "
              "held-out R²; cosine to the target's own vector):", "",
              "| emotion | from the default's block | " + " | ".join(f"from block {b}" for b in document["transplanted_from"]) + " |",
              "|---|---|" + "---|" * len(document["transplanted_from"])]

    def transplanted(emotion: str, block: int) -> str:
        task, row, fit = emotion_task(emotion), f"target|{emotion}|from block {block}", document["vectors"][emotion]["transplanted"][str(block)]
        return (" / ".join(f"{acc(f'{row} α={a}', task):.2f}" for a in target_alphas) + f"; shuffled {acc(f'{row} shuffled α=1', task):.2f}; "
                f"facts {acc(f'{row} α=1', FACTS):.3f}; R² {fit['heldout_r2']:.3f}; cos {fit['cosine_to_own']:.3f}")

    for emotion in names:
        lines.append(f"| {emotion} | ({chosen[emotion]}) {transplanted(emotion, chosen[emotion])} | "
                     + " | ".join(transplanted(emotion, block) for block in document["transplanted_from"]) + " |")
    lines.append("")
    for label, block_of in [("the default's block", chosen)] + [(f"block {b}", {e: b for e in names}) for b in document["transplanted_from"]]:
        reached = emotions.steered(scores, {e: f"target|{e}|from block {block_of[e]} α=1" for e in names})
        mean_cosine = sum(document["vectors"][e]["transplanted"][str(block_of[e])]["cosine_to_own"] for e in names) / len(names)
        lines.append(f"- from {label}, α = 1: {reached} of {len(names)} emotions ≥ 0.8; mean cosine to the target's own vectors {mean_cosine:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
