"""The build, composed once: plan -> record the source -> finish in the target.

`plan_build` checks every argument and settles the recipe and the blocks (running the target-layer
sweep where a layer is "auto"); `record_sources` records what the source owes every concept in one
load of it (freed before the target is touched, so the two are never resident at once);
`finish_build` records the target's anchor states (from the cache, from a target model the caller
already loaded, such as lm-eval's, or from a load of its own), fits the map and transplants each
concept. `build_transplants` is the three in a row: what `contrans build`, the Python API and
`lm_eval --model contrans` all run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from lm_eval_contrans.reformulate import check_anchor_count
from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.blocks import resolve_layer
from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.concepts import ARGUMENT, ConceptSet, load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import (
    ModelSpec, default_device, free_model, load_model, parse_model_spec, release_read_only_tokenizers,
    return_freed_memory_to_the_os,
)
from lm_eval_contrans.pipeline.depth import (
    config_facts, config_layer_count, depth_of, is_auto, load_config, model_layer_count, model_type_of, relative_depth,
    target_block,
)
from lm_eval_contrans.pipeline.fit import make_transplant, warn_if_worse_than_the_mean
from lm_eval_contrans.pipeline.inputs import check_build_texts
from lm_eval_contrans.pipeline.recipe import Recipe, settle_anchor_tokens
from lm_eval_contrans.pipeline.states import ConceptStates, StateRequest, record_concept_states, target_anchor_states_at
from lm_eval_contrans.pipeline.target_layer import choose_target_layers
from lm_eval_contrans.vectors import ForeignVector, ImportedDirection, read_vector

if TYPE_CHECKING:
    from lm_eval_contrans.request import SteeringRequest

logger = logging.getLogger(__name__)


def concept_sets(concepts: tuple) -> list[ConceptSet | ImportedDirection]:
    """The concepts a request names, read: shipped names and files loaded (ConceptSets and imported directions
    pass through). Parsed already (`request.parse_concepts`): a string here would be read letter by letter."""
    if not isinstance(concepts, (tuple, list)):
        raise TypeError(f"concepts: expected the parsed tuple, got {concepts!r} (request.parse_concepts reads it)")
    return [concept if isinstance(concept, (ConceptSet, ImportedDirection)) else load_concept_set(concept)
            for concept in concepts]


def refuse_repeated_concepts(sets: list, layers: dict[str, list]) -> None:
    """Refuse a concept given twice at the same blocks (`concept=X+X`, or a shipped set and its file): its vector
    would be added twice, a double push no one asked for. At other blocks (`target_layer=3+6`) it is a choice."""
    seen = {}
    for position, concept in enumerate(sets):
        key = (concept.pairs_hash, getattr(concept, "block", None),
               *(repr(layers[name][position]) for name in sorted(layers)))
        if key in seen:
            first = sets[seen[key]]
            raise ConTransError(ARGUMENT, f"{concept.name!r} (concept {position + 1}) repeats {first.name!r} (concept "
                                          f"{seen[key] + 1}) at the same blocks, so its vector would be added twice; "
                                          "give it once with a larger alpha, or another target_layer for each")
        seen[key] = position


@dataclass
class BuildPlan:
    """Everything the build will do, settled before any model is loaded for it."""

    source: ModelSpec
    target: ModelSpec
    concepts: list[ConceptSet | ImportedDirection]  # an imported direction: a foreign vector's block
    recipe: Recipe  # anchor tokens settled for these tokenizers; layers: see source_layers / target_layers
    source_layers: list  # per concept: block, depth fraction, "auto" or a list of blocks
    target_layers: list  # per concept: block (chosen by the sweep where "auto"), or depth fraction
    anchor_texts: list[str]
    anchors_name: str
    target_num_layers: int | None  # from the target's config; None: known once the model is loaded
    dtype: str = "float32"
    source_dtype: str = "float32"
    device: str = "cpu"
    batch_size: int | str = "auto"
    notes: list[dict] = field(default_factory=list)  # per concept: what goes into the artifact's `extra`

    def target_depth(self, position: int) -> float | None:
        if self.target_num_layers is None:
            return None
        return relative_depth(target_block(self.target_layers[position], self.target_num_layers), self.target_num_layers)


def plan_build(source: str | ModelSpec, target: str | ModelSpec, concepts: str | Path | ConceptSet | list = "sentiment",
               *, dtype: str = "float32", device: str | None = None, **options) -> BuildPlan:
    """Check every argument, settle the recipe, and choose the blocks (the target-layer sweep loads
    both models where a layer is "auto" and the cache lacks their states).

    Args:
        source, target, concepts: as `build_transplants`.
        dtype, device: how the build passes run.
        **options: the steering request's (`request.SteeringRequest.from_kwargs`): `recipe` ("default",
            "reference" or a Recipe) and the fields that override it (`anchor_tokens`, `map_method`, `ridge`,
            `center`, `alpha_unit`); `source_layer`, `target_layer` (a block index, a depth fraction or "auto";
            `x+y` or a list gives one value per concept); `anchors`, `source_dtype`, `batch_size`,
            `source_block_path`, `block_path`.

    Returns:
        A BuildPlan; `plan.build()` records and fits.

    Raises:
        ConTransError: an argument is wrong, named; nothing is recorded before every one is checked."""
    from lm_eval_contrans.request import SteeringRequest

    request = SteeringRequest.from_kwargs(source=source, target=target, concepts=concepts, **options)
    return plan_request(request, dtype=dtype, device=device)


def plan_request(request: SteeringRequest, *, dtype: str = "float32", device: str | None = None) -> BuildPlan:
    """The build a request asks for: its concepts, or its `source_vector` ported (`plan_port`)."""
    if request.source_vector is not None:
        return _plan_port(request, dtype, device)
    target = parse_model_spec(request.target, "target", request.block_path)  # a bad target fails before the slow part
    source = parse_model_spec(request.source, "source", request.source_block_path)
    recipe = request.recipe
    sets = concept_sets(request.concept)
    layers = {name: [value if value is not None else getattr(recipe, name)
                     for value in request.per_concept(name, len(sets))]
              for name in ("source_layer", "target_layer")}
    anchor_texts, anchors_name = load_anchor_texts(request.anchors)
    refuse_repeated_concepts(sets, layers)
    batch_size = request.build_batch_size
    check_build_texts(source, target, sets, anchor_texts, anchors_name)
    recipe, anchor_note = settle_anchor_tokens(recipe, source, target)
    plan = BuildPlan(source=source, target=target, concepts=sets, recipe=recipe,
                     source_layers=layers["source_layer"], target_layers=layers["target_layer"],
                     anchor_texts=anchor_texts, anchors_name=anchors_name,
                     target_num_layers=config_layer_count(target), dtype=dtype,
                     source_dtype=request.source_dtype or dtype, device=device or default_device(),
                     batch_size=batch_size, notes=[dict(anchor_note) for _ in sets])
    automatic = [position for position, layer in enumerate(plan.target_layers) if is_auto(layer)]
    if automatic:
        if plan.target_num_layers is None:
            model, _ = load_model(target, argument="target", dtype=dtype, device=plan.device)
            plan.target_num_layers = model_layer_count(model)
            free_model(model)
        others = tuple(StateRequest(sets[position], plan.source_layers[position], (plan.target_depth(position),))
                       for position in range(len(sets)) if position not in automatic)  # one source load for all
        chosen = choose_target_layers(
            source, target, [sets[position] for position in automatic], target_num_layers=plan.target_num_layers,
            source_layers=[plan.source_layers[position] for position in automatic], anchor_texts=anchor_texts,
            anchors_name=anchors_name, recipe=recipe, dtype=dtype, source_dtype=plan.source_dtype, device=plan.device,
            batch_size=batch_size, also_record=others)
        for position, (block, sweep) in zip(automatic, chosen):
            plan.target_layers[position] = block
            plan.notes[position].update(sweep)
    return plan


def plan_port(source: str | ModelSpec, target: str | ModelSpec, vector: str | Path | ForeignVector, *,
              dtype: str = "float32", device: str | None = None, **options) -> BuildPlan:
    """Plan the transplant of a steering vector another tool made for `source` (see `vectors.py`):
    the same anchors, recipe and map as a concept build, one map per block the file carries. Each
    block lands on the target block of the same relative depth, or on `target_layer` if given.
    `source_layer` places a file that names no block. `options`: `plan_build`'s."""
    from lm_eval_contrans.request import SteeringRequest

    request = SteeringRequest.from_kwargs(source=source, target=target, source_vector=vector, **options)
    return plan_request(request, dtype=dtype, device=device)


def _plan_port(request: SteeringRequest, dtype: str, device: str | None) -> BuildPlan:
    source = parse_model_spec(request.source, "source", request.source_block_path)
    vector = request.source_vector
    source_layer = request.per_concept("source_layer", 1)[0]  # places a file that names no block
    foreign = vector if isinstance(vector, ForeignVector) else read_vector(vector, source_layer, "source_vector")
    given_blocks = list(foreign.directions)  # as the file or source_layer named them: a fraction keeps its depth
    facts = config_facts(source)
    if facts["num_layers"] is not None and facts["hidden_size"] is not None:
        foreign = foreign.checked(facts["hidden_size"], facts["num_layers"], "source_vector")
    elif not all(isinstance(block, int) and block >= 0 for block in foreign.directions):
        raise ConTransError("source_vector", f"{source.name}'s config does not state its block count, so {foreign.file}'s "
                                             f"blocks must be 0-based indices (got {', '.join(map(str, foreign.directions))})")
    hint, family = foreign.model_hint, facts["model_type"]
    if hint and family and hint.removesuffix("_text") != family.removesuffix("_text"):
        logger.warning("source_vector: %s was made for a %s model (controlvector.model_hint); source %s is a %s",
                       foreign.file, hint, source.name, family)
    directions = [ImportedDirection(foreign, block) for block in foreign.blocks]
    target_layer = request.target_layer
    if target_layer == (None,):  # each block at its depth in the source (a fraction as given), resolved in the target
        source_count = facts["num_layers"] or max(foreign.blocks) + 1
        depths = {resolve_layer(given, source_count, "source_vector"): depth_of(given, source_count) for given in given_blocks}
        target_layer = tuple(float(depths[block]) for block in foreign.blocks)
    return plan_request(dataclasses.replace(request, source=source, source_vector=None, concept=tuple(directions),
                                            source_layer=tuple(direction.block for direction in directions),
                                            target_layer=target_layer), dtype=dtype, device=device)


def build_request(request: SteeringRequest, *, dtype: str = "float32", device: str | None = None) -> list[Transplant]:
    """The transplants a request asks for: plan, record the source, finish in the target."""
    plan = plan_request(request, dtype=dtype, device=device)
    return finish_build(plan, record_sources(plan))


def port_vector(source: str | ModelSpec, target: str | ModelSpec, vector: str | Path | ForeignVector,
                **options) -> list[Transplant]:
    """`contrans port`: another tool's steering vector for `source`, transplanted into `target`.

    Args:
        source: the model the vector was made for.
        target: the model to steer.
        vector: a llama.cpp/repeng control-vector .gguf, an lm-eval steered .pt, a tensor in
            .safetensors/.pt/.npy, or a ForeignVector already read.
        **options: `plan_port`'s (source_layer for a file that names no block, target_layer) and
            `plan_build`'s (the recipe, anchors, dtype, device, batch_size).

    Returns:
        One Transplant per block the file carries; their blocks share alpha (`alpha_share`).

    Raises:
        ConTransError: the file cannot be read, holds a non-finite or zero vector, or does not fit the source.
    """
    plan = plan_port(source, target, vector, **options)
    return finish_build(plan, record_sources(plan))


def record_sources(plan: BuildPlan) -> list[ConceptStates]:
    """The source's concept vectors and anchor states for every concept, in one load of it at most."""
    requests = [StateRequest(concept, layer, (plan.target_depth(position),))
                for position, (concept, layer) in enumerate(zip(plan.concepts, plan.source_layers))]
    sources = record_concept_states(plan.source, requests, anchor_texts=plan.anchor_texts, dtype=plan.source_dtype,
                                    device=plan.device, batch_size=plan.batch_size,
                                    anchor_tokens=plan.recipe.anchor_tokens)
    if plan.recipe.anchor_tokens == "last":
        check_anchor_count(len(plan.anchor_texts), sources[0].hidden_size, plan.recipe.ridge, plan.recipe.map_method)
    return sources


def finish_build(plan: BuildPlan, sources: list[ConceptStates], target_model: nn.Module | None = None,
                 target_tokenizer=None) -> list[Transplant]:
    """Fit and transplant each concept. The target's anchor states come from the cache, else from
    `target_model` (lm-eval's, already loaded), else from a load of the target freed afterwards."""
    own_load = False
    if target_model is None and plan.target_num_layers is not None:
        found = _target_states(plan, None, None, plan.target_num_layers, plan.dtype, plan.device)
        if all(side is not None for side in found):
            logger.info("target states for %s found in the cache; the target model was not loaded", plan.target.name)
            return _transplants(plan, sources, found)
    if target_model is None:
        release_read_only_tokenizers()  # the loaded target brings its own tokenizer
        target_model, target_tokenizer = load_model(plan.target, argument="target", dtype=plan.dtype, device=plan.device)
        own_load = True
    try:
        parameter = next(target_model.parameters())
        found = _target_states(plan, target_model, target_tokenizer, model_layer_count(target_model),
                               str(parameter.dtype).removeprefix("torch."), str(parameter.device))
        return _transplants(plan, sources, found)
    finally:
        if own_load:
            free_model(target_model)
        else:  # the fit's temporaries are freed but glibc keeps their pages, on top of what evaluation needs
            return_freed_memory_to_the_os()


def _target_states(plan: BuildPlan, model, tokenizer, num_layers: int, dtype: str, device: str) -> list:
    """Each concept's target-side anchor states, every block of the build recorded in one pass at most."""
    model_type = model_type_of(model) if model is not None else _configured_model_type(plan.target)
    blocks = [target_block(layer, num_layers) for layer in plan.target_layers]
    found = target_anchor_states_at(plan.target, plan.anchor_texts, blocks, num_layers=num_layers, model_type=model_type,
                                    dtype=dtype, device=device, anchor_tokens=plan.recipe.anchor_tokens, model=model,
                                    tokenizer=tokenizer, batch_size=plan.batch_size)
    return [None if found is None else found[block] for block in blocks]


def _configured_model_type(spec: ModelSpec) -> str:
    return model_type_of(load_config(spec))


def _transplants(plan: BuildPlan, sources: list[ConceptStates], targets: list) -> list[Transplant]:
    transplants = []
    for concept, source, target, note in zip(plan.concepts, sources, targets, plan.notes):
        transplant = make_transplant(source, target, target_name=plan.target.name, concept=concept,
                                     anchor_texts=plan.anchor_texts, anchors_name=plan.anchors_name, recipe=plan.recipe)
        transplant.extra.update(note)
        logger.info("built transplant:\n%s", transplant.summary())
        warn_if_worse_than_the_mean(transplant)
        transplants.append(transplant)
    return transplants


def build_transplants(source: str | ModelSpec, target: str | ModelSpec,
                      concepts: str | Path | ConceptSet | list = "sentiment", **options) -> list[Transplant]:
    """One transplant per concept, from model names or paths alone.

    Args:
        source: the aligned model the concepts are refined in (hub id[@revision], folder, .gguf, packaged:...).
        target: the model to steer, named the same ways.
        concepts: a shipped concept name or a concept-set file, several as `a+b` or a list, or ConceptSets.
        **options: `plan_build`'s: recipe and its overrides, layers (one value, or one per concept), anchors,
            dtype, source_dtype, device, batch_size, block paths.

    Returns:
        One Transplant per concept, in the order given.

    Raises:
        ConTransError: an argument or file is wrong (named in the message), before any model loads where
            that can be told.
    """
    plan = plan_build(source, target, concepts, **options)
    return finish_build(plan, record_sources(plan))


def build_transplant(source: str | ModelSpec, target: str | ModelSpec, concept: str | Path | ConceptSet = "sentiment",
                     **options) -> Transplant:
    """Build one transplant (what `contrans build` runs).

    Args:
        source: the aligned model the concept is refined in (hub id[@revision], folder, .gguf, packaged:...).
        target: the model to steer, named the same ways.
        concept: a shipped concept name, a concept-set file, or a ConceptSet.
        **options: `plan_build`'s: `recipe` ("default" or "reference", the paper's) and the fields that
            override it, layers, anchors, dtype, device, batch size.

    Returns:
        The Transplant (save it with `save_transplant`, steer with `Transplant.apply`).

    Raises:
        ConTransError: an argument is wrong (named), or `concept` names several concepts
            (use `build_transplants`)."""
    transplants = build_transplants(source, target, concept, **options)
    if len(transplants) != 1:
        raise ConTransError("concept", f"{len(transplants)} concepts given; use build_transplants")
    return transplants[0]
