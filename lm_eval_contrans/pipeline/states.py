"""Recording the states a build needs from a model, through the cache.

Concept vectors (refine) and anchor states (reformulate) are cached one entry per block, under a key
of everything that determines them. One call records what a model owes every concept in one load
of it, and only what the cache lacks: a rebuild with identical inputs loads no weights, and a new
concept for the same pair runs only the concept pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from lm_eval_contrans.activations import last_token_states, token_states
from lm_eval_contrans.anchors import anchors_hash, check_anchor_tokens, tokenize_with_ends
from lm_eval_contrans.cache import cache_root, cached_tensor, content_key, fill_entries
from lm_eval_contrans.concepts import ConceptSet
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.refine import concept_vector
from lm_eval_contrans.loading import (
    ModelSpec, default_device, free_model, load_model, model_identity, parse_model_spec,
    read_only_tokenizer,
)
from lm_eval_contrans.pipeline.depth import config_layer_count, model_layer_count, source_blocks
from lm_eval_contrans.vectors import ImportedDirection

logger = logging.getLogger(__name__)
STATE_FORMAT = 1  # bump when the way states are recorded changes


@dataclass(frozen=True)
class StateRequest:
    """What to record for one concept: its pairs, the source-layer argument, and the relative depth(s)
    of the target block(s) that "auto" centres its candidate blocks on (None: 0.75)."""

    concept: ConceptSet | ImportedDirection  # an imported direction: its vector, no concept pass
    layer: int | float | str | list | None = None
    target_depths: tuple[float | None, ...] = (None,)

    @property
    def given(self) -> torch.Tensor | None:
        return self.concept.direction if isinstance(self.concept, ImportedDirection) else None


class StatesOnDisk(Mapping):
    """Anchor states by block, read from the cache at each access and not kept: a source with
    several candidate blocks would otherwise hold them all (a gigabyte with dense anchors) while
    the target model is loaded beside them."""

    def __init__(self, keys: dict[int, dict]) -> None:
        self.keys_by_layer = keys

    def __getitem__(self, layer: int) -> torch.Tensor:
        states = cached_tensor("anchor_states", self.keys_by_layer[layer])
        if states is None:
            raise ConTransError("cache", f"the anchor states of block {layer} left the cache ({cache_root()}) "
                                         "during the build; run it again to record them")
        return states.float()  # a bfloat16 or float16 model's states are stored as they are (activations.token_states)

    def __iter__(self):
        return iter(self.keys_by_layer)

    def __len__(self) -> int:
        return len(self.keys_by_layer)

    def only(self, layers) -> StatesOnDisk:
        return StatesOnDisk({layer: self.keys_by_layer[layer] for layer in layers})


@dataclass
class ConceptStates:
    """One model's concept vectors and anchor states at some blocks: everything the build needs from
    it, so the model itself can be freed. With source_layer=auto it holds several candidate blocks;
    the fit keeps the best."""

    name: str
    num_layers: int
    concept_vectors: dict[int, torch.Tensor]
    anchor_states: Mapping[int, torch.Tensor]  # rows: anchor texts ("last") or their tokens ("dense")
    anchor_ends: list[list[int]] | None = None  # "dense": character end of every token of every text

    @property
    def layers(self) -> list[int]:
        return sorted(self.concept_vectors)

    @property
    def layer(self) -> int:
        if len(self.concept_vectors) != 1:
            raise AttributeError(f"{len(self.concept_vectors)} candidate source blocks; no single layer yet")
        return self.layers[0]

    @property
    def concept_vector(self) -> torch.Tensor:
        return self.concept_vectors[self.layer]

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.concept_vectors.values())).shape[0])

    def anchor_key(self, layer: int) -> str | None:
        """The cache key of a block's anchor states (None for states held only in memory)."""
        states = self.anchor_states
        return content_key(states.keys_by_layer[layer]) if isinstance(states, StatesOnDisk) else None

    def only(self, layers) -> ConceptStates:
        """The same states with only these candidate blocks."""
        states = self.anchor_states
        kept = states.only(layers) if isinstance(states, StatesOnDisk) else {layer: states[layer] for layer in layers}
        return replace(self, concept_vectors={layer: self.concept_vectors[layer] for layer in layers}, anchor_states=kept)


@dataclass
class TargetAnchorStates:
    """The target's anchor states at the block the vector is added to."""

    layer: int
    num_layers: int
    model_type: str
    anchor_states: torch.Tensor
    anchor_ends: list[list[int]] | None
    key: str | None = None  # the states' cache key (None: held only in memory)


def state_key(identity: dict, layer: int, dtype: str, device: str, **what) -> dict:
    return {"model": identity, "layer": layer, "dtype": dtype, "device": torch.device(device).type,
            "format": STATE_FORMAT, **what}


def anchor_key(identity: dict, layer: int, dtype: str, device: str, anchor_texts: list[str], anchor_tokens: str) -> dict:
    return state_key(identity, layer, str(dtype), device, anchors=anchors_hash(anchor_texts),
                     **({"tokens": "dense"} if anchor_tokens == "dense" else {}))


def record_anchor_states(model, tokenizer, anchor_texts: list[str], layers: list[int], *, anchor_tokens: str,
                         batch_size, progress: str) -> dict[int, torch.Tensor]:
    if anchor_tokens == "dense":
        sequences, _ = tokenize_with_ends(tokenizer, anchor_texts)
        return token_states(model, tokenizer, sequences, layers, batch_size=batch_size, progress=progress)
    return last_token_states(model, tokenizer, anchor_texts, layers, batch_size=batch_size, progress=progress)


def anchor_ends(spec: ModelSpec, tokenizer, anchor_texts: list[str]) -> list[list[int]]:
    """Character end of every anchor token; the tokenizer alone is loaded if the model was not."""
    return tokenize_with_ends(tokenizer if tokenizer is not None else read_only_tokenizer(spec), anchor_texts)[1]


class LayerCountMismatch(ConTransError):
    def __init__(self, name: str) -> None:
        super().__init__("block_path", f"{name}: the config's layer count disagrees with the model's decoder blocks")


def record_concept_states(
    model: str | ModelSpec, requests: list[StateRequest], *, anchor_texts: list[str], dtype: str = "float32",
    device: str | None = None, batch_size: int | str = "auto", anchor_tokens: str = "last", role: str = "source",
) -> list[ConceptStates]:
    """Concept vectors and anchor states of `model` for each request, from the cache or from one
    load of the model shared by all of them (freed before this returns)."""
    spec = parse_model_spec(model, role)
    anchor_tokens = check_anchor_tokens(anchor_tokens)
    device = device or default_device()
    num_layers = config_layer_count(spec)
    loaded: list = []  # [model, tokenizer] once loaded

    def with_model():
        if not loaded:
            loaded.extend(load_model(spec, argument=role, dtype=dtype, device=device))
            if num_layers is not None and model_layer_count(loaded[0]) != num_layers:
                raise LayerCountMismatch(spec.name)
        return loaded

    try:
        if num_layers is None:
            num_layers = model_layer_count(with_model()[0])
        identity = model_identity(spec)
        blocks = [source_blocks(request.layer, num_layers, list(request.target_depths)) for request in requests]
        every_block = sorted({index for indices in blocks for index in indices})
        anchor_keys = {layer: anchor_key(identity, layer, dtype, device, anchor_texts, anchor_tokens)
                       for layer in every_block}
        concept_keys = {(position, layer): state_key(identity, layer, str(dtype), device, concept=request.concept.pairs_hash)
                        for position, (request, indices) in enumerate(zip(requests, blocks)) for layer in indices
                        if request.given is None}
        entries = {**{("anchors", layer): ("anchor_states", key) for layer, key in anchor_keys.items()},
                   **{("concept", *name): ("concept_vectors", key) for name, key in concept_keys.items()}}

        def record(missing: list) -> dict:
            return _record_missing(*with_model(), missing, requests, anchor_texts=anchor_texts,
                                   anchor_tokens=anchor_tokens, batch_size=batch_size, role=role)

        fill_entries(entries, record)
        if not loaded:
            logger.info("%s states for %s found in the cache; the model was not loaded", role, spec.name)
        ends = anchor_ends(spec, loaded[1] if loaded else None, anchor_texts) if anchor_tokens == "dense" else None
        on_disk = StatesOnDisk(anchor_keys)
        return [ConceptStates(name=spec.name, num_layers=num_layers,
                              concept_vectors={layer: request.given if request.given is not None else
                                               cached_tensor("concept_vectors", concept_keys[(position, layer)])
                                               for layer in indices},
                              anchor_states=on_disk.only(indices), anchor_ends=ends)
                for position, (request, indices) in enumerate(zip(requests, blocks))]
    finally:
        if loaded:
            free_model(loaded[0])
        loaded.clear()


def _record_missing(model: nn.Module, tokenizer, missing: list, requests: list[StateRequest], *, anchor_texts: list[str],
                    anchor_tokens: str, batch_size: int | str, role: str) -> dict:
    """The missing entries (("anchors", block) and ("concept", request position, block)): every anchor block in one
    pass over the anchors, each concept's blocks in one pass over its pairs."""
    recorded = {}
    anchor_layers = [layer for kind, *rest in missing if kind == "anchors" for layer in rest]
    if anchor_layers:
        states = record_anchor_states(model, tokenizer, anchor_texts, anchor_layers, anchor_tokens=anchor_tokens,
                                      batch_size=batch_size, progress=f"anchors in {role}")
        recorded.update({("anchors", layer): states.pop(layer) for layer in anchor_layers})
    for position, request in enumerate(requests):
        layers = [name[2] for name in missing if name[0] == "concept" and name[1] == position]
        if layers:
            vectors = concept_vector(model, tokenizer, request.concept, layers, batch_size=batch_size,
                                     progress=f"concept '{request.concept.name}' in {role}")
            recorded.update({("concept", position, layer): vectors[layer] for layer in layers})
    return recorded


class _NotCached(Exception):
    pass


def target_anchor_states(
    spec: ModelSpec, anchor_texts: list[str], layer: int, *, num_layers: int, model_type: str, dtype: str,
    device: str, anchor_tokens: str, model: nn.Module | None = None, tokenizer=None,
    batch_size: int | str = "auto",
) -> TargetAnchorStates | None:
    """Anchor states at a target block: cached, or recorded with `model` (None if neither)."""
    found = target_anchor_states_at(spec, anchor_texts, [layer], num_layers=num_layers, model_type=model_type,
                                    dtype=dtype, device=device, anchor_tokens=anchor_tokens, model=model,
                                    tokenizer=tokenizer, batch_size=batch_size)
    return None if found is None else found[layer]


def target_anchor_states_at(
    spec: ModelSpec, anchor_texts: list[str], layers: list[int], *, num_layers: int, model_type: str, dtype: str,
    device: str, anchor_tokens: str, model: nn.Module | None = None, tokenizer=None,
    batch_size: int | str = "auto",
) -> dict[int, TargetAnchorStates] | None:
    """Anchor states at several target blocks: cached, or the missing ones recorded with `model` in one pass
    over the anchors (None where some are missing and there is no model)."""
    keys = {layer: anchor_key(model_identity(spec), layer, dtype, device, anchor_texts, anchor_tokens)
            for layer in sorted(set(layers))}

    def record(missing: list) -> dict:
        if model is None:
            raise _NotCached
        return record_anchor_states(model, tokenizer, anchor_texts, list(missing), anchor_tokens=anchor_tokens,
                                    batch_size=batch_size, progress="anchors in target")

    try:
        fill_entries({layer: ("anchor_states", key) for layer, key in keys.items()}, record)
    except _NotCached:
        return None
    ends = anchor_ends(spec, tokenizer, anchor_texts) if anchor_tokens == "dense" else None
    on_disk = StatesOnDisk(keys)
    return {layer: TargetAnchorStates(layer=layer, num_layers=num_layers, model_type=model_type,
                                      anchor_states=on_disk[layer], anchor_ends=ends, key=content_key(key))
            for layer, key in keys.items()}
