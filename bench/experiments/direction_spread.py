"""How strong alpha = 1 is along each concept's direction, and along the random control's.

For each concept's default transplant: the norm alpha = 1 adds (0.1 x the target block's median
residual norm), the spread (standard deviation) of the target's anchor states along the transplanted
direction, the target's own concept separation (mean positive - negative state) along it, and the
spread along the random control's direction. Both are in units of the alpha = 1 norm. A steer of a
given norm is a bigger push, relative to what the target's states do, along a direction where they
barely vary: this is what the "random vector of equal norm" control means on this pair.

Run:  python bench/experiments/direction_spread.py      (about 3 min on 2 cores with a warm state cache)
"""

from __future__ import annotations

import argparse

from experiment_data import SOURCE, TARGET, add_json_argument, machine, printed_from_saved, write_json

CONCEPTS = ["honesty", "toxicity", "sentiment", "happiness", "sadness", "anger", "fear", "disgust", "surprise"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", nargs="+", default=CONCEPTS)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from transformers import AutoConfig

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import random_control, target_own_vector
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.pipeline.depth import model_type_of
    from lm_eval_contrans.pipeline.states import target_anchor_states
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.transplant import ALPHA_UNIT_FRACTION

    print(f"machine: {machine()}", flush=True)
    anchor_texts, _ = load_anchor_texts(None)
    target_spec = parse_model_spec(TARGET, "target")
    model_type = model_type_of(AutoConfig.from_pretrained(pretrained_path(target_spec)))
    rows, states = [], {}
    for concept in args.concepts:
        transplant = build_transplant(SOURCE, TARGET, concept, device="cpu")
        block = transplant.target_layer
        if block not in states:
            side = target_anchor_states(target_spec, anchor_texts, block, num_layers=transplant.target_num_layers,
                                        model_type=model_type, dtype="float32", device="cpu", anchor_tokens="dense")
            centred = side.anchor_states.double()
            states[block] = centred - centred.mean(0)
        unit = ALPHA_UNIT_FRACTION * transplant.residual_norm
        direction = transplant.vector.double() / transplant.vector.double().norm()
        random_direction = random_control(transplant, seed=0).vector.double()
        random_direction = random_direction / random_direction.norm()
        own = target_own_vector(transplant, load_concept_set(concept), anchor_texts, device="cpu").double()
        rows.append((concept, block, unit, float((states[block] @ direction).std()) / unit,
                     float(own @ direction) / unit, float((states[block] @ random_direction).std()) / unit))
    document = {"rows": [dict(zip(("concept", "target_block", "norm_at_alpha_1", "spread", "own_separation",
                                   "random_spread"), row)) for row in rows]}
    write_json(args.json, document)
    print("\n" + render(document))


def render(document: dict) -> str:
    """The docs/RESULTS.md table, from the numbers `main` measured."""
    lines = ["| concept | target block | norm at α = 1 | spread along the transplant | target's own separation along it "
             "| spread along the random control |", "|---|---|---|---|---|---|"]
    for row in document["rows"]:
        lines.append(f"| {row['concept']} | {row['target_block']} | {row['norm_at_alpha_1']:,.0f} | {row['spread']:.2f} | "
                     f"{row['own_separation']:.2f} | {row['random_spread']:.3f} |")
    lines.append("\n(spreads and separations in units of the α = 1 norm: α = 1 moves a state 1 / spread standard deviations)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
