"""Reformulate and transplant: fit the map on paired anchor states and carry the concept vector over.

With several candidate source blocks (source_layer=auto) a map is fitted at each and the one with the
best held-out R^2 is kept. The map does not depend on the concept, so fits are remembered within a
process: several concepts, or the blocks of a target-layer sweep, on the same states share one.
"""

from __future__ import annotations

import logging

import torch

from lm_eval_contrans.reformulate import fit_linear_map
from lm_eval_contrans.map_methods import MAP_METHODS
from lm_eval_contrans.anchors import anchors_hash, matched_token_pairs
from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.concepts import ConceptSet
from lm_eval_contrans.vectors import ImportedDirection
from lm_eval_contrans.pipeline.recipe import REFERENCE, Recipe
from lm_eval_contrans.pipeline.states import ConceptStates, TargetAnchorStates

logger = logging.getLogger(__name__)


def paired_indices(source: ConceptStates, target: TargetAnchorStates) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source row index, target row index, anchor text of each pair) of the states the map is fitted on."""
    if source.anchor_ends is None:
        rows = torch.arange(len(target.anchor_states))
        return rows, rows, rows
    source_index, target_index = matched_token_pairs(source.anchor_ends, target.anchor_ends)
    groups = torch.repeat_interleave(torch.arange(len(target.anchor_ends)),
                                     torch.tensor([len(ends) for ends in target.anchor_ends]))
    target_index = torch.tensor(target_index)
    return torch.tensor(source_index), target_index, groups[target_index]


_FITS: dict = {}  # fitted maps by the cache keys of the states they fit, shared across concepts in one process
FITS_KEPT = 256  # one auto target sweep fits ~70 maps; each holds a source x target matrix


def fit_key(recipe: Recipe, source_key, target_key) -> tuple | None:
    """What names a fit in `_FITS`: the method, the recipe fields its fit is given, and the cache keys of the
    states (which pin model, block, dtype, corpus and token pairing); None for states held only in memory."""
    if source_key is None or target_key is None:
        return None
    return recipe.map_method, *MAP_METHODS[recipe.map_method].options(recipe).values(), source_key, target_key


def fit_maps(source: ConceptStates, target: TargetAnchorStates, recipe: Recipe) -> tuple[dict, torch.Tensor]:
    """({source block: map fitted there}, the target rows they were fitted to)."""
    source_index, target_index, groups = paired_indices(source, target)
    target_rows = target.anchor_states[target_index]
    fits = {}
    for layer in source.layers:
        # the map does not depend on the concept: several concepts on the same states share one fit
        key = fit_key(recipe, source.anchor_key(layer), target.key)
        if key in _FITS:
            fits[layer] = _FITS[key]
            continue
        fits[layer] = fit_linear_map(source.anchor_states[layer][source_index], target_rows, method=recipe.map_method,
                                     groups=groups, **MAP_METHODS[recipe.map_method].options(recipe))
        if key is not None:
            if len(_FITS) >= FITS_KEPT:
                _FITS.pop(next(iter(_FITS)))
            _FITS[key] = fits[layer]
    return fits, target_rows


def make_transplant(
    source: ConceptStates, target: TargetAnchorStates, *, target_name: str, concept: ConceptSet | ImportedDirection,
    anchor_texts: list[str],
    anchors_name: str, recipe: Recipe = REFERENCE,
) -> Transplant:
    """Fit the map on paired anchor states (choosing the source block if several are candidates)
    and transplant the source concept vector."""
    fits, target_rows = fit_maps(source, target, recipe)
    layer = max(fits, key=lambda index: fits[index].heldout_r2)
    linear_map = fits[layer]
    extra = {"imported": concept.vector.origin()} if isinstance(concept, ImportedDirection) else {}
    if len(fits) > 1:
        extra["source_layer_sweep"] = {str(index): round(fit.heldout_r2, 4) for index, fit in fits.items()}
        logger.info("source block chosen by held-out R^2: %s", ", ".join(f"{i}: {f.heldout_r2:.3f}" for i, f in fits.items()))
    logger.info("source block %d -> target block %d: held-out R^2 %.3f", layer, target.layer, linear_map.heldout_r2)
    return Transplant.from_fields(
        vector=linear_map.transplant(source.concept_vectors[layer][None])[0].float(),
        source_vector=source.concept_vectors[layer].float(),
        map_weight=linear_map.weight.float(),
        source=source.name,
        target=target_name,
        source_hidden_size=source.hidden_size,
        target_hidden_size=int(target.anchor_states.shape[1]),
        source_num_layers=source.num_layers,
        target_num_layers=target.num_layers,
        source_layer=layer,
        target_layer=target.layer,
        target_model_type=target.model_type,
        concept=concept.name,
        concept_hash=concept.pairs_hash,
        concept_pairs=len(concept),
        anchors=anchors_name,
        anchors_hash=anchors_hash(anchor_texts),
        anchor_count=len(anchor_texts),
        map_method=linear_map.method,
        ridge=linear_map.ridge,
        heldout_r2=linear_map.heldout_r2,
        anchor_tokens="dense" if source.anchor_ends is not None else "last",
        center=linear_map.center,
        alpha_unit=recipe.alpha_unit,
        residual_norm=float(target_rows.double().norm(dim=1).median()),
        extra=extra,
        # the blocks of one ported vector share alpha: with it per block, a file of N blocks pushes N times as hard
        alpha_share=1 / len(concept.vector.directions) if isinstance(concept, ImportedDirection) else 1.0,
    )


def warn_if_worse_than_the_mean(transplant: Transplant) -> None:
    """One warning line where a built transplant's map scores a held-out R² below 0: on held-out anchors it predicts
    the target block's states worse than their mean does, so the vector it carries over is mostly the map's error."""
    if transplant.heldout_r2 < 0:
        logger.warning("%s: the map from source block %d to target block %d has held-out R^2 %.3f, below 0 (worse "
                       "than predicting the mean state): the transplanted vector is unreliable; try more anchors, "
                       "another block or map=ridge", transplant.concept, transplant.source_layer,
                       transplant.target_layer, transplant.heldout_r2)
