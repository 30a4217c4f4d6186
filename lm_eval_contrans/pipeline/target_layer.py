"""target_layer=auto: choose the target block where the transplanted direction best carries the concept."""

from __future__ import annotations

import logging

from lm_eval_contrans.concepts import ConceptSet
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec
from lm_eval_contrans.pipeline.depth import is_auto, relative_depth, source_layer_candidates, target_layer_candidates
from lm_eval_contrans.pipeline.fit import make_transplant, paired_indices
from lm_eval_contrans.pipeline.recipe import Recipe
from lm_eval_contrans.pipeline.states import StateRequest, TargetAnchorStates, record_concept_states
from lm_eval_contrans.vectors import ImportedDirection

logger = logging.getLogger(__name__)
VALIDATION_FRACTION = 0.2  # of the concept pairs, held out to score target blocks


def choose_target_layers(
    source: ModelSpec, target: ModelSpec, concepts: list[ConceptSet], *, source_layers: list, target_num_layers: int,
    anchor_texts: list[str], anchors_name: str, recipe: Recipe, dtype: str, source_dtype: str, device: str,
    batch_size: int | str, also_record: tuple[StateRequest, ...] = (),
) -> list[tuple[int, dict]]:
    """(block, sweep record) for each concept: the candidate target block where the transplanted
    direction best carries the concept in the target, scored on concept pairs the direction was not
    made from. `also_record`: other concepts' source states, recorded in the same load of the source.

    Each concept's pairs are split (VALIDATION_FRACTION held out, seeded). At each candidate block the
    map is fitted as the recipe says and the source vector of the training pairs is transplanted; the
    score is the target's own mean (positive - negative) state on the held-out pairs projected on
    that direction, over the spread of the anchor states along it: how far the concept moves the
    target along the direction, in units of the direction's natural variation. The source is loaded
    once for every concept (and records the whole sets' vectors too, for the build at the chosen
    blocks), then the target once; neither for states the cache holds."""
    for concept in concepts:
        if isinstance(concept, ImportedDirection):
            raise ConTransError("target_layer", f"auto scores blocks with held-out concept pairs, and a vector made by "
                                                f"another tool ({concept.name}) has none; give a block index or fraction, "
                                                "or leave target_layer out (the same relative depth as in the source)")
        if len(concept) < 5:
            raise ConTransError("target_layer", f"auto holds out concept pairs to score blocks; needs at least 5 pairs, "
                                                f"'{concept.name}' has {len(concept)}. Give a block index or fraction.")
    splits = [concept.split(VALIDATION_FRACTION) for concept in concepts]
    candidates = target_layer_candidates(target_num_layers)
    depths = tuple(relative_depth(index, target_num_layers) for index in candidates)
    requests = [StateRequest(part, layer, depths) for (training, _), concept, layer in zip(splits, concepts, source_layers)
                for part in (training, concept)]
    source_states = record_concept_states(source, [*requests, *also_record], anchor_texts=anchor_texts,
                                          dtype=source_dtype, device=device, batch_size=batch_size,
                                          anchor_tokens=recipe.anchor_tokens)[:len(requests):2]
    # the target read like a source: its own held-out concept vectors and anchor states at every candidate
    target_own = record_concept_states(target, [StateRequest(held_out, candidates) for _, held_out in splits],
                                       anchor_texts=anchor_texts, dtype=dtype, device=device, batch_size=batch_size,
                                       anchor_tokens=recipe.anchor_tokens, role="target")
    chosen = []
    for (training, held_out), layer, source_side, target_side in zip(splits, source_layers, source_states, target_own):
        sweep = {}
        for index, depth in zip(candidates, depths):
            band = (source_layer_candidates(source_side.num_layers, depth) if is_auto(layer)
                    else source_side.layers)
            restricted = source_side.only(band)
            side = TargetAnchorStates(layer=index, num_layers=target_num_layers, model_type="",
                                      anchor_states=target_side.anchor_states[index], anchor_ends=target_side.anchor_ends,
                                      key=target_side.anchor_key(index))
            transplant = make_transplant(restricted, side, target_name=target.name, concept=training,
                                         anchor_texts=anchor_texts, anchors_name=anchors_name, recipe=recipe)
            direction = transplant.vector.double() / transplant.vector.double().norm()
            _, target_rows, _ = paired_indices(restricted, side)
            spread = float((side.anchor_states[target_rows].double() @ direction).std())
            score = float(target_side.concept_vectors[index].double() @ direction) / max(spread, 1e-12)
            sweep[str(index)] = {"source_layer": transplant.source_layer, "heldout_r2": round(transplant.heldout_r2, 4),
                                 "score": round(score, 4)}
        best = max(candidates, key=lambda index: sweep[str(index)]["score"])
        logger.info("target block chosen by held-out concept separation: %s (%s)", best,
                    ", ".join(f"{i}: {v['score']:.2f}" for i, v in sweep.items()))
        chosen.append((best, {"target_layer_sweep": sweep, "held_out_pairs": len(held_out)}))
    return chosen
