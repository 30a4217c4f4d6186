"""The whole pipeline from plain Python: refine in the source, fit the map, transplant the vector.

The source model is loaded, used for the concept vector and the anchor states, and freed before
the target is touched, so the two are never resident at once. Every recorded state is cached
(`cache.cached_tensor`) under a key of everything that determines it: a rebuild with identical
inputs loads neither model's weights for the build, and a new concept for the same pair runs only
the concept pass in the source.
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
from lm_eval_contrans.cache import cached_tensor
from lm_eval_contrans.concepts import ConceptSet, load_concept_set
from lm_eval_contrans.extract import concept_vector
from lm_eval_contrans.loading import (
    ModelSpec, default_device, load_model, model_identity, parse_model_spec, pretrained_path,
)

logger = logging.getLogger(__name__)
STATE_FORMAT = 1  # bump when the way states are recorded changes


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


def config_layer_count(folder: str) -> int | None:
    """Decoder-block count from the config alone (no weights), or None if it does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception:
        return None
    for candidate in (config, getattr(config, "text_config", None)):
        for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def free_model(model: nn.Module) -> None:
    """Release a model's weights now, even while the caller still holds a reference to it."""
    try:
        model.to("meta")
    except Exception:  # some wrappers refuse; the references going out of scope still free it
        pass
    gc.collect()
    _return_freed_memory_to_the_os()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _return_freed_memory_to_the_os() -> None:
    # glibc keeps freed heap pages for reuse; the target (loaded next) may not fit in them, so
    # without this the source's pages stay in the process's resident set on top of the target's.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _state_key(identity: dict, layer: int, dtype: str, device: str, **what) -> dict:
    return {"model": identity, "layer": layer, "dtype": dtype, "device": torch.device(device).type,
            "format": STATE_FORMAT, **what}


def load_source_sides(
    source: str | ModelSpec, *, concepts: list[ConceptSet], anchor_texts: list[str],
    layers: list[int | float | str | None], dtype: str = "float32", device: str | None = None,
    batch_size: int | str = "auto",
) -> list[SourceSide]:
    """Concept vectors and anchor states of the source for each (concept, layer), from the cache
    or one load of the model shared by all of them."""
    spec = source if isinstance(source, ModelSpec) else parse_model_spec(source, "source")
    device = device or default_device()
    folder = pretrained_path(spec)
    num_layers = config_layer_count(folder)
    model = tokenizer = None
    try:
        if num_layers is None:
            model, tokenizer = load_model(spec, argument="source", dtype=dtype, device=device)
            num_layers = model_layer_count(model)
        identity = model_identity(spec)

        def with_model():
            nonlocal model, tokenizer
            if model is None:
                model, tokenizer = load_model(spec, argument="source", dtype=dtype, device=device)
                if model_layer_count(model) != num_layers:
                    raise ConTransLayerCountError(spec.name)
            return model, tokenizer

        indices = [resolve_layer(layer, num_layers, "source_layer") for layer in layers]
        sides = []
        for concept, index in zip(concepts, indices):
            vector = cached_tensor(
                "concept_vectors",
                _state_key(identity, index, str(dtype), device, concept=concept.pairs_hash),
                lambda: concept_vector(*with_model(), concept, index, batch_size=batch_size,
                                       progress=f"concept '{concept.name}' in source"),
            )
            states = cached_tensor(
                "anchor_states",
                _state_key(identity, index, str(dtype), device, anchors=anchors_hash(anchor_texts)),
                lambda: last_token_states(*with_model(), anchor_texts, [index], batch_size=batch_size,
                                          progress="anchors in source")[index],
            )
            sides.append(SourceSide(name=spec.name, layer=index, num_layers=num_layers, concept_vector=vector,
                                    anchor_states=states))
        if model is None:
            logger.info("source states for %s found in the cache; the source model was not loaded", spec.name)
        return sides
    finally:
        if model is not None:
            free_model(model)
        del model


def load_source_side(
    source: str | ModelSpec, *, concept: ConceptSet, anchor_texts: list[str],
    layer: int | float | str | None = None, dtype: str = "float32", device: str | None = None,
    batch_size: int | str = "auto",
) -> SourceSide:
    """Concept vector and anchor states of the source, from the cache or one load of the model."""
    return load_source_sides(source, concepts=[concept], anchor_texts=anchor_texts, layers=[layer], dtype=dtype,
                             device=device, batch_size=batch_size)[0]


class ConTransLayerCountError(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: the config's layer count disagrees with the model's decoder blocks")


def target_anchor_states(
    spec: ModelSpec, anchor_texts: list[str], layer: int, *, dtype: str, device: str,
    model: nn.Module | None = None, tokenizer=None, batch_size: int | str = "auto",
) -> torch.Tensor | None:
    """Anchor states at a target block: cached, or recorded with `model` (None if neither)."""
    compute = None
    if model is not None:
        def compute():
            return last_token_states(model, tokenizer, anchor_texts, [layer], batch_size=batch_size,
                                     progress="anchors in target")[layer]
    return cached_tensor(
        "anchor_states",
        _state_key(model_identity(spec), layer, str(dtype), device, anchors=anchors_hash(anchor_texts)),
        compute,
    )


def make_transplant(
    source: SourceSide, target_states: torch.Tensor, *, target_name: str, target_layer: int,
    target_num_layers: int, target_model_type: str, concept: ConceptSet, anchor_texts: list[str],
    anchors_name: str, ridge: float = 0.0,
) -> Transplant:
    """Fit the map on paired anchor states and transplant the source concept vector."""
    linear_map = fit_linear_map(source.anchor_states, target_states, ridge=ridge)
    logger.info("source block %d -> target block %d: held-out R^2 %.3f", source.layer, target_layer,
                linear_map.heldout_r2)
    return Transplant(
        vector=linear_map(source.concept_vector[None])[0].float(),
        source_vector=source.concept_vector.float(),
        map_weight=linear_map.weight.float(),
        source=source.name,
        target=target_name,
        source_hidden_size=int(source.anchor_states.shape[1]),
        target_hidden_size=int(target_states.shape[1]),
        source_num_layers=source.num_layers,
        target_num_layers=target_num_layers,
        source_layer=source.layer,
        target_layer=target_layer,
        target_model_type=target_model_type,
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


def model_type_of(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", type(model_or_config).__name__))


def transplant_into(
    source: SourceSide, target_model: nn.Module, target_tokenizer, *, target_spec: ModelSpec,
    concept: ConceptSet, anchor_texts: list[str], anchors_name: str,
    layer: int | float | str | None = None, ridge: float = 0.0, batch_size: int | str = "auto",
) -> Transplant:
    """Transplant into an already-loaded target (what the lm-eval adapter does)."""
    num_layers = model_layer_count(target_model)
    index = resolve_layer(layer, num_layers, "target_layer")
    check_anchor_count(len(anchor_texts), int(source.anchor_states.shape[1]), ridge)
    parameter = next(target_model.parameters())
    states = target_anchor_states(target_spec, anchor_texts, index, dtype=str(parameter.dtype).removeprefix("torch."),
                                  device=str(parameter.device), model=target_model, tokenizer=target_tokenizer,
                                  batch_size=batch_size)
    return make_transplant(source, states, target_name=target_spec.name, target_layer=index,
                           target_num_layers=num_layers, target_model_type=model_type_of(target_model),
                           concept=concept, anchor_texts=anchor_texts, anchors_name=anchors_name, ridge=ridge)


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
    batch_size: int | str = "auto",
) -> Transplant:
    """Build a transplant from model names/paths alone (what `contrans build` runs)."""
    from transformers import AutoConfig

    concept_set = load_concept_set(concept)
    anchor_texts, anchors_name = load_anchor_texts(anchors)
    ridge = check_ridge(ridge)
    device = device or default_device()
    target_spec = parse_model_spec(target, "target")  # fail on a bad target before the slow part
    side = load_source_side(source, concept=concept_set, anchor_texts=anchor_texts, layer=source_layer,
                            dtype=dtype, device=device, batch_size=batch_size)
    check_anchor_count(len(anchor_texts), int(side.anchor_states.shape[1]), ridge)
    folder = pretrained_path(target_spec)
    num_layers = config_layer_count(folder)
    if num_layers is not None:
        index = resolve_layer(target_layer, num_layers, "target_layer")
        states = target_anchor_states(target_spec, anchor_texts, index, dtype=dtype, device=device)
        if states is not None:
            logger.info("target states for %s found in the cache; the target model was not loaded", target_spec.name)
            return make_transplant(side, states, target_name=target_spec.name, target_layer=index,
                                   target_num_layers=num_layers, target_model_type=model_type_of(AutoConfig.from_pretrained(folder)),
                                   concept=concept_set, anchor_texts=anchor_texts, anchors_name=anchors_name, ridge=ridge)
    target_model, target_tokenizer = load_model(target_spec, argument="target", dtype=dtype, device=device)
    try:
        return transplant_into(side, target_model, target_tokenizer, target_spec=target_spec,
                               concept=concept_set, anchor_texts=anchor_texts, anchors_name=anchors_name,
                               layer=target_layer, ridge=ridge, batch_size=batch_size)
    finally:
        free_model(target_model)
