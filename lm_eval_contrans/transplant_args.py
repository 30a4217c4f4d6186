"""The transplant's model args, read once for every engine: `--model contrans` (HFLM),
`--model contrans-vllm` and `contrans serve`.

Getting the transplants is two steps around the load of the target: `prepare_transplants` checks the
args and does everything that needs no target (reads a file, or plans a build and records the
source, which is then freed); `Prepared.finish` completes it against the target: lm-eval's loaded
model, or, for an engine that loads the target itself, the cache or a load of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass

from lm_eval_contrans.artifact import is_transplant_file, load_steering
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, parse_model_spec
from lm_eval_contrans.paths import writable_output
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.pipeline.build import (
    BuildPlan, concept_count, finish_build, per_concept, plan_build, plan_port, record_sources,
)
from lm_eval_contrans.steering import check_alpha, check_alpha_unit
from lm_eval_contrans.transplant import Steering, Transplant, check_against_target, directions_of
from lm_eval_contrans.vectors import ForeignVector, read_vector, target_directions

logger = logging.getLogger(__name__)


def alphas_for(alpha, count: int) -> list[float]:
    """One alpha for every transplant, or one each (`a+b`, or a list)."""
    return [check_alpha(value) for value in per_concept(alpha, count, "alpha")]


def read_steering_file(vector, block=None, argument: str = "vector") -> list[Steering] | ForeignVector:
    """A file given as a vector: one of our artifacts (its transplants), or another tool's steering
    vector (`block` places a bare tensor). From Python, Transplants and Directions pass through."""
    if isinstance(vector, (Transplant, Direction)):
        return [vector]
    if isinstance(vector, (list, tuple)) and all(isinstance(item, (Transplant, Direction)) for item in vector):
        return list(vector)  # an empty list: the target unsteered, until use_transplants
    if is_artifact_path(vector):
        return load_steering(vector, argument)
    return read_vector(vector, block, argument)


def is_artifact_path(path) -> bool:
    """Whether a path is meant as one of our artifacts: a .safetensors file with our metadata, or one that
    is missing or damaged (left to the artifact reader's errors). A readable safetensors file of another
    tool, or any other suffix (.gguf, .pt, .npy), is another tool's steering vector."""
    if not str(path).lower().endswith(".safetensors"):
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError):
        return True
    return is_transplant_file(path)


@dataclass
class Prepared:
    """Transplants asked for, ready up to what needs the target: `finish` completes them."""

    target: ModelSpec
    alphas: list[float]
    plan: BuildPlan | None = None  # a concept build or a port: its source side is recorded in `sources`
    sources: list | None = None
    transplants: list[Steering] | None = None  # read from an artifact (or given from Python)
    foreign: ForeignVector | None = None  # another tool's vector made for the target itself

    def finish(self, model=None, tokenizer=None) -> list[Steering]:
        """The transplants for the target: `model` is the target as the engine loaded it (HFLM's), or
        None where the engine keeps its own (the build then reads the cache or loads the target)."""
        if self.plan is not None:
            return finish_build(self.plan, self.sources, model, tokenizer)
        if self.foreign is not None:
            facts = target_facts(self.target, model)
            return target_directions(self.foreign, hidden_size=facts["hidden_size"], num_layers=facts["num_layers"])
        return self.transplants


def engine_target_spec(target: str, block_path: str | None, engine_args: dict) -> ModelSpec:
    """The target, with the engine's args that say which weights, tokenizer and code to load taken into it
    (`revision`, `gguf_file`, `trust_remote_code`, removed from `engine_args`: `spec.load_kwargs` hands them
    back; `peft`, `delta` and `tokenizer` stay the engine's to apply too): the build reads the same weights
    and tokenizer, its cache keys name them, and the engine loads the spec's folder (a GGUF de-quantized
    once, as for `target=file.gguf`)."""
    spec = parse_model_spec(target, "target", block_path=block_path)
    gguf_file = engine_args.pop("gguf_file", None)
    if gguf_file:
        if spec.gguf_file is not None:
            raise ConTransError("gguf_file", f"target={target} already names a GGUF file")
        revision = f"@{spec.revision}" if spec.revision else ""
        spec = parse_model_spec(f"{spec.pretrained.rstrip('/')}/{gguf_file}{revision}", "target", block_path=block_path)
    trust = as_bool(engine_args.pop("trust_remote_code", False), "trust_remote_code")
    # HFLM applies these to the weights it loads (the build records from that model): they name its states
    adapter = next(((kind, str(engine_args[kind])) for kind in ("peft", "delta") if engine_args.get(kind)), None)
    tokenizer = engine_args.get("tokenizer") if isinstance(engine_args.get("tokenizer"), str) else None
    return dataclasses.replace(spec.at_revision(engine_args.pop("revision", None), "target"), trust_remote_code=trust,
                               adapter=adapter, tokenizer=tokenizer)


def target_facts(target: ModelSpec, model=None) -> dict:
    """hidden_size, num_layers, model_type of the target: from the loaded model, else its config."""
    from lm_eval_contrans.pipeline.depth import config_facts, model_layer_count, model_type_of, residual_width

    if model is not None:
        return {"hidden_size": residual_width(model), "num_layers": model_layer_count(model),
                "model_type": model_type_of(model)}
    facts = config_facts(target)
    if None in facts.values():
        raise ConTransError("target", f"the config of {target.name} does not state its hidden size, block count and "
                                      "model type, which a transplant is checked against")
    return facts


@dataclass
class TransplantArgs:
    """The model args that say what steers the target (README: "Model args"); the engine's own args
    (HFLM's or vLLM's) are everything else."""

    source: str | None = None  # the aligned model a concept is refined in (or a source_vector was made for)
    concept: str | list = "sentiment"  # shipped name or concept-set file; several as a+b
    alpha: float | str | list = 1.0  # one for all, or one per transplant (a+b)
    recipe: str | None = None  # default | reference; the fields below override it
    source_layer: int | float | str | None = None
    target_layer: int | float | str | None = None
    anchors: str | None = None
    anchor_tokens: str | None = None
    map: str | None = None  # a name in map_methods.MAP_METHODS, checked with the recipe before any model loads
    ridge: float | str | None = None
    center: bool | str | None = None
    alpha_unit: str | None = None
    vector: object = None  # an artifact or another tool's vector file for the target (from Python: Transplants)
    source_vector: str | None = None  # another tool's vector file for the source, ported through the map
    save_vector: str | None = None
    build_batch_size: int | str = "auto"
    source_dtype: str | None = None
    check_target_name: bool | str = True
    positions: str = "all"
    block_path: str | None = None
    source_block_path: str | None = None

    @classmethod
    def take(cls, model_args: dict, engine_names: tuple[str, ...] = ()) -> TransplantArgs:
        """The transplant's args, removed from `model_args` (what is left belongs to the engine). A left-over
        arg that is a near miss of one of ours (`alpah`) is refused before anything loads: the engine would
        take it, and fail only after the build or not at all. `engine_names`: the engine's own args."""
        names = [field.name for field in dataclasses.fields(cls)]
        for given in model_args:
            refuse_spaced_name(given)
            if given in names or given in engine_names:
                continue
            near = difflib.get_close_matches(given, names, n=1, cutoff=0.8)
            if near:
                raise ConTransError(given, f"unknown model arg; did you mean {near[0]}? The transplant's args: "
                                           f"{', '.join(names)} (every other arg is the engine's)")
        taken = cls(**{name: model_args.pop(name) for name in names if name in model_args})
        if taken.save_vector:  # before the build, not after it
            writable_output(taken.save_vector, "save_vector")
        return taken


def refuse_spaced_name(given: str) -> None:
    """Refuse a model arg name with spaces around it (`--model_args a=1, vector=x`): lm-eval's parsers split at
    commas and keep each name as written, so no engine would take ' vector', and a near-miss guess would only
    confuse. The value's spaces are lm-eval's to strip (it reads ' 2' as 2)."""
    if isinstance(given, str) and given != given.strip():
        raise ConTransError(given.strip() or repr(given), f"{given!r} has spaces around its name (a space after a "
                                                          "comma in --model_args?), which lm-eval keeps, so no model "
                                                          f"arg takes it; write {given.strip()}=... with no space")


def target_name(target: str | None, pretrained: str | None) -> str:
    """The model to steer: `target`, or lm-eval's usual `pretrained` for it."""
    if target is not None and pretrained is not None and target != pretrained:
        raise ConTransError("target", f"given twice with different values ({target!r} and pretrained={pretrained!r})")
    target = target if target is not None else pretrained
    if not isinstance(target, str) or not target:
        raise ConTransError("target", "name the model to steer: target=<hub id | folder | file.gguf>")
    return target


def prepare_transplants(target: ModelSpec, args: TransplantArgs, *, dtype: str = "float32",
                        device: str | None = None) -> Prepared:
    """Check the transplant args and do what needs no target: read `vector=`, or plan the build (a concept,
    or `source_vector=` ported) and record the source, freed before the target loads."""
    if args.vector is None and args.source is None:
        raise ConTransError("source", "give source=<model> to build the transplant, or vector=<artifact.safetensors> to load one")
    if args.vector is not None:
        if args.source_vector is not None:  # one would be dropped, the steering not the one asked for
            raise ConTransError("source_vector", "give vector= (steering the target as it is) or source_vector= "
                                                 "(another tool's vector for the source, ported through the map), "
                                                 "not both")
        return _prepare_given(target, args)
    # trust_remote_code=True: the user trusts the code of both models they named
    source = parse_model_spec(args.source, "source", block_path=args.source_block_path,
                              trust_remote_code=target.trust_remote_code)
    options = dict(recipe=args.recipe, anchors=args.anchors, anchor_tokens=args.anchor_tokens, map_method=args.map,
                   ridge=args.ridge, center=args.center, alpha_unit=args.alpha_unit, dtype=dtype,
                   source_dtype=args.source_dtype, device=device, batch_size=args.build_batch_size)
    if args.source_vector is not None:  # another tool's vector for the source, ported through the map
        plan = plan_port(source, target, args.source_vector, source_layer=args.source_layer,
                         target_layer=args.target_layer, **options)
        alphas = alphas_for(args.alpha, len(plan.concepts))
    else:
        concept = args.concept
        alphas = alphas_for(args.alpha, concept_count(concept))  # before any model loads
        plan = plan_build(source, target, concept, source_layer=args.source_layer, target_layer=args.target_layer,
                          **options)
    return Prepared(target=target, alphas=alphas, plan=plan, sources=record_sources(plan))


def _prepare_given(target: ModelSpec, args: TransplantArgs) -> Prepared:
    given = read_steering_file(args.vector, args.target_layer, "vector")
    alpha, alpha_unit = args.alpha, args.alpha_unit
    if args.source is not None:
        logger.warning("vector= given: the source model %s is not loaded", args.source)
    if isinstance(given, ForeignVector):  # made for the target itself by another tool
        if args.save_vector:
            raise ConTransError("save_vector", f"{given.file} was made for the target by another tool: nothing is "
                                               "built from it, so there is no artifact to save (the file steers as it is)")
        if alpha_unit not in (None, "raw"):
            raise ConTransError("alpha_unit", "a vector made for the target by another tool steers in its own "
                                              "units (alpha_unit=raw); port it with source= and source_vector= "
                                              "for residual units")
        return Prepared(target=target, alphas=alphas_for(alpha, len(given.directions)), foreign=given)
    if args.save_vector and any(isinstance(item, Direction) for item in given):
        raise ConTransError("save_vector", "a bare Direction is not a fitted transplant: there is no artifact to save")
    if alpha_unit is not None:
        unit = check_alpha_unit(alpha_unit)
        given = [item.with_steering(alpha_unit=unit) if isinstance(item, Transplant) else dataclasses.replace(item, alpha_unit=unit)
                 for item in given]
    return Prepared(target=target, alphas=alphas_for(alpha, len(given)), transplants=given)


def transplant_info(given: list[Steering], alphas: list[float], positions: str) -> dict:
    """What lm-eval's results record about the steering (its `config.model_info`): a transplant's whole
    record, a bare direction's block, unit, norm and origin."""
    described = [item.describe() for item in given]
    if len(described) == 1:
        return {"alpha": alphas[0], "positions": positions, **described[0]}
    return {"alpha": alphas, "positions": positions, "transplants": described}


def describe_steering(directions: list[Direction], alphas: list[float]) -> str:
    """What steers, in words, for messages: each direction at its block and alpha."""
    return ", ".join(f"{d.name} at block {d.block}, alpha {alpha:g} ({d.alpha_unit} units)"
                     for d, alpha in zip(directions, alphas))


# beyond this many times the steered block's median residual norm, the block's output is the added vector's alone
MOST_PUSH = 1000.0


def check_for_target(given: list[Steering], alphas: list[float], *, target: str, facts: dict,
                     strict_name: bool) -> list[Direction]:
    """What every engine checks before it steers: each transplant was made for this target, each bare
    direction fits it (`facts`: `target_facts`), and no alpha dwarfs the residual stream.

    Returns:
        The directions to steer with, one per given transplant or direction.
    """
    for item in given:
        if isinstance(item, Transplant):
            check_against_target(item, target=target, strict_name=strict_name, **facts)
        else:
            item.checked_for(facts["hidden_size"], facts["num_layers"])
    directions = directions_of(given)
    check_push(directions, alphas)
    return directions


def check_push(directions: list[Direction], alphas: list[float]) -> None:
    """Refuse an alpha whose added vector dwarfs the residual stream it is added to (alpha=1e30 is finite, and so
    are the states after it in some models, where the outputs become a uniform distribution reported as scores)."""
    for direction, alpha in zip(directions, alphas):
        if abs(alpha) <= push_limit(direction):
            continue
        added = abs(alpha) * float(direction.steering_vector().double().norm())
        raise ConTransError("alpha", f"{alpha:g} adds a vector of norm {added:.3g} to block {direction.block}, "
                                     f"{added / direction.residual_norm:.3g} times its median residual norm "
                                     f"({direction.residual_norm:.3g}); the block's output would be the vector's "
                                     f"alone. At most {MOST_PUSH:g} times ({direction.name}, "
                                     f"{direction.alpha_unit} units)")


def push_limit(direction: Direction) -> float:
    """The largest |alpha| `check_push` lets through for `direction` (inf where no residual norm was recorded:
    another tool's vector for the target, checked for finiteness only)."""
    if direction.residual_norm <= 0:
        return math.inf
    return MOST_PUSH * direction.residual_norm / float(direction.steering_vector().double().norm())
