"""The whole pipeline from plain Python: refine in the source, fit the map, transplant the vector.

The source model is loaded, used for the concept vector and the anchor states, and freed before
the target is touched, so the two are never resident at once.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lm_eval_contrans.activations import last_token_states
from lm_eval_contrans.alignment import check_anchor_count, check_ridge, fit_linear_map
from lm_eval_contrans.anchors import anchors_hash, load_anchor_texts
from lm_eval_contrans.artifact import Transplant
from lm_eval_contrans.blocks import decoder_blocks, resolve_layer
from lm_eval_contrans.concepts import ConceptSet, load_concept_set
from lm_eval_contrans.extract import concept_vector
from lm_eval_contrans.loading import ModelSpec, load_model, parse_model_spec

logger = logging.getLogger(__name__)


@dataclass
class SourceSide:
    """Everything the build needs from the source model, so the model itself can be freed."""

    name: str
    layer: int
    num_layers: int
    concept_vector: torch.Tensor
    anchor_states: torch.Tensor


def model_layer_count(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def source_side(
    model: nn.Module, tokenizer, *, name: str, concept: ConceptSet, anchor_texts: list[str],
    layer: int | float | str | None = None, batch_size: int = 16,
) -> SourceSide:
    num_layers = model_layer_count(model)
    index = resolve_layer(layer, num_layers, "source_layer")
    vector = concept_vector(model, tokenizer, concept, index, batch_size=batch_size,
                            progress=f"concept '{concept.name}' in source")
    states = last_token_states(model, tokenizer, anchor_texts, [index], batch_size=batch_size,
                               progress="anchors in source")[index]
    return SourceSide(name=name, layer=index, num_layers=num_layers, concept_vector=vector, anchor_states=states)


def free_model(model: nn.Module) -> None:
    """Release a model's weights now, even while the caller still holds a reference to it."""
    try:
        model.to("meta")
    except Exception:  # some wrappers refuse; the references going out of scope still free it
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_source_side(
    source: str | ModelSpec, *, concept: ConceptSet, anchor_texts: list[str],
    layer: int | float | str | None = None, dtype: str = "float32", device: str | None = None,
    batch_size: int = 16,
) -> SourceSide:
    spec = source if isinstance(source, ModelSpec) else parse_model_spec(source, "source")
    model, tokenizer = load_model(spec, argument="source", dtype=dtype, device=device)
    try:
        return source_side(model, tokenizer, name=spec.name, concept=concept,
                           anchor_texts=anchor_texts, layer=layer, batch_size=batch_size)
    finally:
        free_model(model)


def transplant_into(
    source: SourceSide, target_model: nn.Module, target_tokenizer, *, target_name: str,
    concept: ConceptSet, anchor_texts: list[str], anchors_name: str,
    layer: int | float | str | None = None, ridge: float = 0.0, batch_size: int = 16,
) -> Transplant:
    """Fit the map on the target's anchor states and return the transplanted vector."""
    num_layers = model_layer_count(target_model)
    index = resolve_layer(layer, num_layers, "target_layer")
    check_anchor_count(len(anchor_texts), int(source.anchor_states.shape[1]), ridge)
    target_states = last_token_states(target_model, target_tokenizer, anchor_texts, [index],
                                      batch_size=batch_size, progress="anchors in target")[index]
    linear_map = fit_linear_map(source.anchor_states, target_states, ridge=ridge)
    logger.info("source layer %d -> target layer %d: held-out R^2 %.3f", source.layer, index, linear_map.heldout_r2)
    config = getattr(target_model, "config", None)
    return Transplant(
        vector=linear_map(source.concept_vector[None])[0].float(),
        source_vector=source.concept_vector.float(),
        map_weight=linear_map.weight.float(),
        source=source.name,
        target=target_name,
        source_hidden_size=int(source.anchor_states.shape[1]),
        target_hidden_size=int(target_states.shape[1]),
        source_num_layers=source.num_layers,
        target_num_layers=num_layers,
        source_layer=source.layer,
        target_layer=index,
        target_model_type=str(getattr(config, "model_type", type(target_model).__name__)),
        concept=concept.name,
        concept_hash=concept.pairs_hash,
        concept_pairs=len(concept),
        anchors=anchors_name,
        anchors_hash=anchors_hash(anchor_texts),
        anchor_count=len(anchor_texts),
        map_method=linear_map.method,
        ridge=linear_map.ridge,
        heldout_r2=linear_map.heldout_r2,
    )


def build_transplant(
    source: str,
    target: str,
    concept: str | Path = "sentiment",
    *,
    source_layer: int | float | str | None = None,
    target_layer: int | float | str | None = None,
    anchors: str | Path | None = None,
    ridge: float = 0.0,
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 16,
) -> Transplant:
    """Build a transplant from model names/paths alone (what `contrans build` runs)."""
    concept_set = load_concept_set(concept)
    anchor_texts, anchors_name = load_anchor_texts(anchors)
    target_spec = parse_model_spec(target, "target")  # fail on a bad target before the slow part
    check_ridge(ridge)
    side = load_source_side(source, concept=concept_set, anchor_texts=anchor_texts, layer=source_layer,
                            dtype=dtype, device=device, batch_size=batch_size)
    check_anchor_count(len(anchor_texts), int(side.anchor_states.shape[1]), ridge)
    target_model, target_tokenizer = load_model(target_spec, argument="target", dtype=dtype, device=device)
    try:
        return transplant_into(side, target_model, target_tokenizer, target_name=target_spec.name,
                               concept=concept_set, anchor_texts=anchor_texts, anchors_name=anchors_name,
                               layer=target_layer, ridge=ridge, batch_size=batch_size)
    finally:
        free_model(target_model)
