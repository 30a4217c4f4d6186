"""The whole pipeline from plain Python: refine in the source, fit the map, transplant the vector.

The source model is loaded, used for the concept vector and the anchor states, and freed before
the target is touched, so the two are never resident at once. How the map is fitted is a `Recipe`:
the default (dense token anchors, centred least squares, source block chosen by held-out R^2,
alpha in units of the target's residual norm) or `REFERENCE`, the paper's recipe. Every recorded state is cached
(`cache.cached_tensor`) under a key of everything that determines it: a rebuild with identical
inputs loads neither model's weights for the build, and a new concept for the same pair runs only
the concept pass in the source.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lm_eval_contrans.activations import last_token_states, token_states
from lm_eval_contrans.alignment import check_anchor_count, check_map_method, check_ridge, fit_linear_map
from lm_eval_contrans.anchors import (
    anchors_hash, check_anchor_tokens, load_anchor_texts, matched_token_pairs, tokenize_with_ends,
)
from lm_eval_contrans.artifact import Transplant
from lm_eval_contrans.blocks import configured_layer_count, decoder_blocks, resolve_layer
from lm_eval_contrans.cache import cache_root, cached_tensor, has_tensor
from lm_eval_contrans.concepts import ConceptSet, load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.extract import concept_vector
from lm_eval_contrans.loading import (
    ModelSpec, default_device, load_model, model_identity, parse_model_spec, pretrained_path,
)
from lm_eval_contrans.steering import check_alpha_unit

logger = logging.getLogger(__name__)
STATE_FORMAT = 1  # bump when the way states are recorded changes
SOURCE_LAYER_BAND = 0.15  # source_layer=auto tries blocks within this relative depth of the target's
TARGET_LAYER_RANGE = (0.4, 0.85)  # target_layer=auto tries the blocks in this range of relative depth
VALIDATION_FRACTION = 0.2  # of the concept pairs, held out to score target blocks (target_layer=auto)


@dataclass(frozen=True)
class Recipe:
    """How the transplant is made (everything but the models, concept and layers)."""

    anchor_tokens: str = "dense"  # "dense": every token pair ending at the same character; "last": last tokens
    map_method: str = "lstsq"
    ridge: float | str = 0.0
    center: bool = True
    alpha_unit: str = "residual"  # alpha 1 = ALPHA_UNIT_FRACTION of the target block's median residual norm
    source_layer: int | float | str | None = "auto"
    target_layer: int | float | str | None = 0.75

    def checked(self) -> Recipe:
        check_anchor_tokens(self.anchor_tokens)
        check_map_method(self.map_method)
        check_alpha_unit(self.alpha_unit)
        return replace(self, ridge=check_ridge(self.ridge), center=_as_bool(self.center, "center"))


DEFAULT = Recipe()
# The paper's recipe (Dong et al. 2024; willowdong/ConTrans): last-token anchors, least squares
# without bias, both blocks at 75 % depth, alpha multiplies the transplanted vector as it is.
REFERENCE = Recipe(anchor_tokens="last", map_method="lstsq", ridge=0.0, center=False, alpha_unit="raw",
                   source_layer=0.75, target_layer=0.75)
RECIPES = {"default": DEFAULT, "reference": REFERENCE}


def _as_bool(value, argument: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConTransError(argument, f"expected true or false, got {value!r}")


def make_recipe(recipe: str | Recipe | None = None, **overrides) -> Recipe:
    """A named recipe ("default", "reference") with the given fields replaced (None: keep)."""
    if isinstance(recipe, Recipe):
        base = recipe
    else:
        name = recipe or "default"
        if name not in RECIPES:
            raise ConTransError("recipe", f"expected one of {', '.join(RECIPES)}, got {name!r}")
        base = RECIPES[name]
    return replace(base, **{key: value for key, value in overrides.items() if value is not None}).checked()


def settle_anchor_tokens(recipe: Recipe, *specs: ModelSpec) -> tuple[Recipe, dict]:
    """(recipe, note for the artifact's extra). Dense anchors pair tokens by character offsets, which
    only fast (Rust) tokenizers give: with any other tokenizer the build falls back to last-token
    anchors, says so once, and the artifact records why."""
    if recipe.anchor_tokens != "dense":
        return recipe, {}
    from transformers import AutoTokenizer

    for spec in specs:
        tokenizer = AutoTokenizer.from_pretrained(pretrained_path(spec))
        if not getattr(tokenizer, "is_fast", False):
            reason = f"{spec.name}: {type(tokenizer).__name__} gives no character offsets"
            logger.warning("anchor_tokens=dense pairs tokens by character offsets (%s); using anchor_tokens=last",
                           reason)
            return replace(recipe, anchor_tokens="last"), {"anchor_tokens_fallback": reason}
    return recipe, {}


@dataclass
class SourceSide:
    """Everything the build needs from the source model, so the model itself can be freed.

    With source_layer=auto it holds several candidate blocks; `make_transplant` keeps the best."""

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

    def only(self, layers) -> SourceSide:
        """The same side with only these candidate blocks."""
        states = self.anchor_states
        kept = states.only(layers) if isinstance(states, StatesOnDisk) else {layer: states[layer] for layer in layers}
        return replace(self, concept_vectors={layer: self.concept_vectors[layer] for layer in layers}, anchor_states=kept)


def model_layer_count(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def config_layer_count(folder: str) -> int | None:
    """Decoder-block count from the config alone (no weights), or None if it does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception:
        return None
    return configured_layer_count(config)


def free_model(model: nn.Module) -> None:
    """Release a model's weights now, even while the caller still holds a reference to it."""
    try:
        model.to("meta")
    except Exception:  # some wrappers refuse; the references going out of scope still free it
        pass
    gc.collect()
    return_freed_memory_to_the_os()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def return_freed_memory_to_the_os() -> None:
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


def relative_depth(index: int, num_layers: int) -> float:
    return index / max(1, num_layers - 1)


def source_layer_candidates(num_layers: int, target_depth: float | None) -> list[int]:
    """Source blocks whose relative depth lies within SOURCE_LAYER_BAND of the target block's (in a
    shallow model, at least the neighbouring blocks)."""
    if target_depth is None:
        target_depth = 0.75
    band = max(SOURCE_LAYER_BAND, 1 / max(1, num_layers - 1))
    candidates = [index for index in range(num_layers)
                  if abs(relative_depth(index, num_layers) - target_depth) <= band + 1e-9]
    return candidates or [round(target_depth * (num_layers - 1))]


def target_layer_candidates(num_layers: int) -> list[int]:
    """Target blocks that target_layer=auto scores: relative depth within TARGET_LAYER_RANGE, and
    the fixed default's block (0.75) in any case, so a shallow model still gets a choice."""
    low, high = TARGET_LAYER_RANGE
    candidates = {index for index in range(num_layers) if low - 1e-9 <= relative_depth(index, num_layers) <= high + 1e-9}
    return sorted(candidates | {resolve_layer(0.75, num_layers, "target_layer")})


def is_auto(layer) -> bool:
    return isinstance(layer, str) and layer.strip() == "auto"


def _resolve_source_layers(layer, num_layers: int, target_depth: float | list[float] | None) -> list[int]:
    if isinstance(layer, (list, tuple)):
        return sorted({resolve_layer(value, num_layers, "source_layer") for value in layer})
    if is_auto(layer):
        depths = target_depth if isinstance(target_depth, list) else [target_depth]
        return sorted({index for depth in depths for index in source_layer_candidates(num_layers, depth)})
    return [resolve_layer(layer, num_layers, "source_layer")]


def _anchor_ends(spec: ModelSpec, tokenizer, anchor_texts: list[str]) -> list[list[int]]:
    """Character end of every anchor token; the tokenizer alone is loaded if the model was not."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained_path(spec))
    return tokenize_with_ends(tokenizer, anchor_texts)[1]


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
        return states

    def __iter__(self):
        return iter(self.keys_by_layer)

    def __len__(self) -> int:
        return len(self.keys_by_layer)

    def only(self, layers) -> StatesOnDisk:
        return StatesOnDisk({layer: self.keys_by_layer[layer] for layer in layers})


def _anchor_states(spec: ModelSpec, identity: dict, anchor_texts: list[str], layers: list[int], *, anchor_tokens: str,
                   dtype: str, device: str, with_model, progress: str, batch_size) -> StatesOnDisk:
    """Anchor states at `layers`, cached one entry per layer; one forward pass fills every miss."""
    keys = {layer: _state_key(identity, layer, str(dtype), device, anchors=anchors_hash(anchor_texts),
                              **({"tokens": "dense"} if anchor_tokens == "dense" else {}))
            for layer in layers}
    missing = [layer for layer, key in keys.items() if not has_tensor("anchor_states", key)]
    if missing:
        model, tokenizer = with_model()
        if anchor_tokens == "dense":
            sequences, _ = tokenize_with_ends(tokenizer, anchor_texts)
            recorded = token_states(model, tokenizer, sequences, missing, batch_size=batch_size, progress=progress)
        else:
            recorded = last_token_states(model, tokenizer, anchor_texts, missing, batch_size=batch_size, progress=progress)
        for layer in missing:
            cached_tensor("anchor_states", keys[layer], lambda layer=layer: recorded.pop(layer))
    return StatesOnDisk(keys)


def load_source_sides(
    source: str | ModelSpec, *, concepts: list[ConceptSet], anchor_texts: list[str],
    layers: list[int | float | str | list | None], dtype: str = "float32", device: str | None = None,
    batch_size: int | str = "auto", anchor_tokens: str = "last", target_depth: float | list[float] | None = None,
    role: str = "source",
) -> list[SourceSide]:
    """Concept vectors and anchor states of the source for each (concept, layer), from the cache
    or one load of the model shared by all of them. A layer "auto" gives the candidate blocks
    around `target_depth` (the target block's relative depth, or several); a list gives those blocks."""
    spec = parse_model_spec(source, "source")
    anchor_tokens = check_anchor_tokens(anchor_tokens)
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

        per_concept = [_resolve_source_layers(layer, num_layers, target_depth) for layer in layers]
        every_layer = sorted({index for indices in per_concept for index in indices})
        anchor_states = _anchor_states(spec, identity, anchor_texts, every_layer, anchor_tokens=anchor_tokens,
                                       dtype=dtype, device=device, with_model=with_model,
                                       progress=f"anchors in {role}", batch_size=batch_size)
        anchor_ends = None
        if anchor_tokens == "dense":
            anchor_ends = _anchor_ends(spec, tokenizer, anchor_texts)
        sides = []
        for concept, indices in zip(concepts, per_concept):
            vectors = _concept_vectors(identity, concept, indices, dtype=dtype, device=device, with_model=with_model,
                                       batch_size=batch_size, role=role)
            sides.append(SourceSide(name=spec.name, num_layers=num_layers, concept_vectors=vectors,
                                    anchor_states=anchor_states.only(indices),
                                    anchor_ends=anchor_ends))
        if model is None:
            logger.info("source states for %s found in the cache; the source model was not loaded", spec.name)
        return sides
    finally:
        if model is not None:
            free_model(model)
        del model


def _concept_vectors(identity: dict, concept: ConceptSet, layers: list[int], *, dtype: str, device: str, with_model,
                     batch_size, role: str = "source") -> dict[int, torch.Tensor]:
    """Concept vectors at `layers`, cached one entry per layer; one pass fills every miss."""
    keys = {layer: _state_key(identity, layer, str(dtype), device, concept=concept.pairs_hash) for layer in layers}
    found = {layer: cached_tensor("concept_vectors", key) for layer, key in keys.items()}
    missing = [layer for layer, vector in found.items() if vector is None]
    if missing:
        recorded = concept_vector(*with_model(), concept, missing, batch_size=batch_size,
                                  progress=f"concept '{concept.name}' in {role}")
        for layer in missing:
            found[layer] = cached_tensor("concept_vectors", keys[layer], lambda layer=layer: recorded[layer])
    return found


def load_source_side(
    source: str | ModelSpec, *, concept: ConceptSet, anchor_texts: list[str],
    layer: int | float | str | None = None, dtype: str = "float32", device: str | None = None,
    batch_size: int | str = "auto", anchor_tokens: str = "last", target_depth: float | None = None,
    role: str = "source",
) -> SourceSide:
    """Concept vector and anchor states of the source, from the cache or one load of the model."""
    return load_source_sides(source, concepts=[concept], anchor_texts=anchor_texts, layers=[layer], dtype=dtype,
                             device=device, batch_size=batch_size, anchor_tokens=anchor_tokens,
                             target_depth=target_depth, role=role)[0]


class ConTransLayerCountError(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: the config's layer count disagrees with the model's decoder blocks")


@dataclass
class TargetSide:
    layer: int
    num_layers: int
    model_type: str
    anchor_states: torch.Tensor
    anchor_ends: list[list[int]] | None


def target_anchor_side(
    spec: ModelSpec, anchor_texts: list[str], layer: int, *, num_layers: int, model_type: str, dtype: str,
    device: str, anchor_tokens: str, model: nn.Module | None = None, tokenizer=None,
    batch_size: int | str = "auto",
) -> TargetSide | None:
    """Anchor states at a target block: cached, or recorded with `model` (None if neither)."""

    def with_model():
        if model is None:
            raise _NotCached
        return model, tokenizer

    try:
        states = _anchor_states(spec, model_identity(spec), anchor_texts, [layer], anchor_tokens=anchor_tokens,
                                dtype=dtype, device=device, with_model=with_model, progress="anchors in target",
                                batch_size=batch_size)[layer]
    except _NotCached:
        return None
    ends = None
    if anchor_tokens == "dense":
        ends = _anchor_ends(spec, tokenizer, anchor_texts)
    return TargetSide(layer=layer, num_layers=num_layers, model_type=model_type, anchor_states=states, anchor_ends=ends)


class _NotCached(Exception):
    pass


def paired_indices(source: SourceSide, target: TargetSide) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source row index, target row index, anchor text of each pair) of the states the map is fitted on."""
    if source.anchor_ends is None:
        rows = torch.arange(len(target.anchor_states))
        return rows, rows, rows
    source_index, target_index = matched_token_pairs(source.anchor_ends, target.anchor_ends)
    groups = torch.repeat_interleave(torch.arange(len(target.anchor_ends)),
                                     torch.tensor([len(ends) for ends in target.anchor_ends]))
    target_index = torch.tensor(target_index)
    return torch.tensor(source_index), target_index, groups[target_index]


_FITS: dict = {}  # fitted maps by state fingerprint, shared across concepts in one process
FITS_KEPT = 256  # one auto target sweep fits ~70 maps; each holds a source x target matrix


def _fingerprint(states: torch.Tensor) -> tuple:
    # a sample of rows is enough to tell apart the states of different models, blocks or corpora,
    # and costs a hundredth of hashing every row (this runs for every candidate map of every build)
    values = states[::97].double()
    return tuple(states.shape), float(values.sum()), float(values.square().sum()), float(values[::7].abs().sum())


def make_transplant(
    source: SourceSide, target: TargetSide, *, target_name: str, concept: ConceptSet, anchor_texts: list[str],
    anchors_name: str, recipe: Recipe = REFERENCE,
) -> Transplant:
    """Fit the map on paired anchor states (choosing the source block if several are candidates)
    and transplant the source concept vector."""
    source_index, target_index, groups = paired_indices(source, target)
    target_rows = target.anchor_states[target_index]
    fits = {}
    for layer in source.layers:
        source_rows = source.anchor_states[layer][source_index]
        # the map does not depend on the concept: several concepts on the same states share one fit
        key = (recipe.map_method, recipe.ridge, recipe.center, _fingerprint(source_rows), _fingerprint(target_rows))
        if key not in _FITS:
            if len(_FITS) >= FITS_KEPT:
                _FITS.pop(next(iter(_FITS)))
            _FITS[key] = fit_linear_map(source_rows, target_rows, method=recipe.map_method, ridge=recipe.ridge,
                                        center=recipe.center, groups=groups)
        fits[layer] = _FITS[key]
    layer = max(fits, key=lambda index: fits[index].heldout_r2)
    linear_map = fits[layer]
    extra = {}
    if len(fits) > 1:
        extra["source_layer_sweep"] = {str(index): round(fit.heldout_r2, 4) for index, fit in fits.items()}
        logger.info("source block chosen by held-out R^2: %s", ", ".join(f"{i}: {f.heldout_r2:.3f}" for i, f in fits.items()))
    logger.info("source block %d -> target block %d: held-out R^2 %.3f", layer, target.layer, linear_map.heldout_r2)
    return Transplant(
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
    )


def choose_target_layer(
    source: str | ModelSpec, target: str | ModelSpec, *, concept: ConceptSet, anchor_texts: list[str],
    anchors_name: str, recipe: Recipe, dtype: str = "float32", source_dtype: str | None = None,
    device: str | None = None, batch_size: int | str = "auto",
) -> tuple[int, dict]:
    """target_layer=auto: the candidate target block where the transplanted direction best carries
    the concept in the target, scored on concept pairs the direction was not made from.

    The pairs are split (VALIDATION_FRACTION held out, seeded). At each candidate block the map is
    fitted as the recipe says and the source vector of the training pairs is transplanted; the
    score is the target's own mean (positive - negative) state on the held-out pairs projected on
    that direction, over the spread of the anchor states along it: how far the concept moves the
    target along the direction, in units of the direction's natural variation. Both models are
    loaded (one after the other) only for states the cache lacks. Returns (block, sweep record)."""
    if len(concept) < 5:
        raise ConTransError("target_layer", f"auto holds out concept pairs to score blocks; needs at least 5 pairs, "
                                            f"'{concept.name}' has {len(concept)}. Give a block index or fraction.")
    source_spec = parse_model_spec(source, "source")
    target_spec = parse_model_spec(target, "target")
    device = device or default_device()
    num_layers = config_layer_count(pretrained_path(target_spec))
    if num_layers is None:
        model, _ = load_model(target_spec, argument="target", dtype=dtype, device=device)
        num_layers = model_layer_count(model)
        free_model(model)
        del model
    training, held_out = concept.split(VALIDATION_FRACTION)
    candidates = target_layer_candidates(num_layers)
    depths = [relative_depth(index, num_layers) for index in candidates]
    # the whole set's vectors are recorded in the same source load, for the build at the chosen block
    source_side = load_source_sides(source_spec, concepts=[training, concept], anchor_texts=anchor_texts,
                                    layers=[recipe.source_layer] * 2, dtype=source_dtype or dtype, device=device,
                                    batch_size=batch_size, anchor_tokens=recipe.anchor_tokens, target_depth=depths)[0]
    # the target read like a source: its own held-out concept vector and anchor states at every candidate
    target_own = load_source_sides(target_spec, concepts=[held_out], anchor_texts=anchor_texts, layers=[candidates],
                                   dtype=dtype, device=device, batch_size=batch_size,
                                   anchor_tokens=recipe.anchor_tokens, role="target")[0]
    sweep = {}
    for index, depth in zip(candidates, depths):
        band = (source_layer_candidates(source_side.num_layers, depth) if is_auto(recipe.source_layer)
                else source_side.layers)
        restricted = source_side.only(band)
        side = TargetSide(layer=index, num_layers=num_layers, model_type="", anchor_states=target_own.anchor_states[index],
                          anchor_ends=target_own.anchor_ends)
        transplant = make_transplant(restricted, side, target_name=target_spec.name, concept=training,
                                     anchor_texts=anchor_texts, anchors_name=anchors_name, recipe=recipe)
        direction = transplant.vector.double() / transplant.vector.double().norm()
        _, target_rows, _ = paired_indices(restricted, side)
        spread = float((side.anchor_states[target_rows].double() @ direction).std())
        score = float(target_own.concept_vectors[index].double() @ direction) / max(spread, 1e-12)
        sweep[str(index)] = {"source_layer": transplant.source_layer, "heldout_r2": round(transplant.heldout_r2, 4),
                             "score": round(score, 4)}
    best = max(candidates, key=lambda index: sweep[str(index)]["score"])
    logger.info("target block chosen by held-out concept separation: %s (%s)", best,
                ", ".join(f"{i}: {v['score']:.2f}" for i, v in sweep.items()))
    return best, {"target_layer_sweep": sweep, "held_out_pairs": len(held_out)}


def model_type_of(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", type(model_or_config).__name__))


def target_block(layer, num_layers: int) -> int:
    return resolve_layer(layer, num_layers, "target_layer")


def transplant_into(
    source: SourceSide, target_model: nn.Module, target_tokenizer, *, target_spec: ModelSpec,
    concept: ConceptSet, anchor_texts: list[str], anchors_name: str, recipe: Recipe = REFERENCE,
    layer: int | float | str | None = None, batch_size: int | str = "auto",
) -> Transplant:
    """Transplant into an already-loaded target (what the lm-eval adapter does)."""
    num_layers = model_layer_count(target_model)
    index = target_block(layer if layer is not None else recipe.target_layer, num_layers)
    parameter = next(target_model.parameters())
    side = target_anchor_side(target_spec, anchor_texts, index, num_layers=num_layers,
                              model_type=model_type_of(target_model),
                              dtype=str(parameter.dtype).removeprefix("torch."), device=str(parameter.device),
                              anchor_tokens=recipe.anchor_tokens, model=target_model, tokenizer=target_tokenizer,
                              batch_size=batch_size)
    return make_transplant(source, side, target_name=target_spec.name, concept=concept, anchor_texts=anchor_texts,
                           anchors_name=anchors_name, recipe=recipe)


def build_transplant(
    source: str | ModelSpec,
    target: str | ModelSpec,
    concept: str | Path = "sentiment",
    *,
    recipe: str | Recipe | None = None,
    source_layer: int | float | str | None = None,
    target_layer: int | float | str | None = None,
    anchors: str | Path | None = None,
    anchor_tokens: str | None = None,
    map_method: str | None = None,
    ridge: float | str | None = None,
    center: bool | None = None,
    alpha_unit: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int | str = "auto",
    source_block_path: str | None = None,
    block_path: str | None = None,
) -> Transplant:
    """Build a transplant from model names/paths alone (what `contrans build` runs).

    `recipe` is "default" or "reference" (the paper's); the other arguments override its fields.
    `block_path` / `source_block_path` name the decoder-block list where discovery needs telling."""
    recipe = make_recipe(recipe, anchor_tokens=anchor_tokens, map_method=map_method, ridge=ridge, center=center,
                         alpha_unit=alpha_unit, source_layer=source_layer, target_layer=target_layer)
    concept_set = load_concept_set(concept)
    anchor_texts, anchors_name = load_anchor_texts(anchors)
    device = device or default_device()
    target_spec = parse_model_spec(target, "target", block_path)  # fail on a bad target before the slow part
    source = parse_model_spec(source, "source", source_block_path)
    recipe, note = settle_anchor_tokens(recipe, source, target_spec)
    if is_auto(recipe.target_layer):
        index, sweep = choose_target_layer(source, target_spec, concept=concept_set, anchor_texts=anchor_texts,
                                           anchors_name=anchors_name, recipe=recipe, dtype=dtype, device=device,
                                           batch_size=batch_size)
        recipe = replace(recipe, target_layer=index)
        note.update(sweep)
    transplant = _build_at_fixed_target_layer(source, target_spec, concept_set, recipe=recipe, anchor_texts=anchor_texts,
                                              anchors_name=anchors_name, dtype=dtype, device=device,
                                              batch_size=batch_size)
    transplant.extra.update(note)
    return transplant


def _build_at_fixed_target_layer(source: ModelSpec, target_spec: ModelSpec, concept_set: ConceptSet, *, recipe: Recipe,
                                 anchor_texts: list[str], anchors_name: str, dtype: str, device: str,
                                 batch_size: int | str) -> Transplant:
    from transformers import AutoConfig

    folder = pretrained_path(target_spec)
    num_layers = config_layer_count(folder)
    index = target_block(recipe.target_layer, num_layers) if num_layers is not None else None
    side = load_source_side(source, concept=concept_set, anchor_texts=anchor_texts, layer=recipe.source_layer,
                            dtype=dtype, device=device, batch_size=batch_size, anchor_tokens=recipe.anchor_tokens,
                            target_depth=None if index is None else relative_depth(index, num_layers))
    if recipe.anchor_tokens == "last":
        check_anchor_count(len(anchor_texts), side.hidden_size, recipe.ridge, recipe.map_method)
    if index is not None:
        cached = target_anchor_side(target_spec, anchor_texts, index, num_layers=num_layers,
                                    model_type=model_type_of(AutoConfig.from_pretrained(folder)), dtype=dtype,
                                    device=device, anchor_tokens=recipe.anchor_tokens)
        if cached is not None:
            logger.info("target states for %s found in the cache; the target model was not loaded", target_spec.name)
            return make_transplant(side, cached, target_name=target_spec.name, concept=concept_set,
                                   anchor_texts=anchor_texts, anchors_name=anchors_name, recipe=recipe)
    target_model, target_tokenizer = load_model(target_spec, argument="target", dtype=dtype, device=device)
    try:
        return transplant_into(side, target_model, target_tokenizer, target_spec=target_spec,
                               concept=concept_set, anchor_texts=anchor_texts, anchors_name=anchors_name,
                               recipe=recipe, batch_size=batch_size)
    finally:
        free_model(target_model)
