"""The service every engine steers through (`--model contrans` (HFLM), `--model contrans-vllm`, `contrans serve`):
a `SteeringRequest` (request.py) in, what to steer with out.

Getting it is two steps around the load of the target: `prepare` does everything that needs no target (reads a
file, or plans a build and records the source, which is then freed); `Prepared.ready` completes it against the
target (lm-eval's loaded model, or, for an engine that loads the target itself, the cache or a load of its own),
checks it there and saves it where asked: directions, alphas, positions and the provenance for the results.
Each engine is left with what differs: HF's hooks, vLLM's hand-off of a bank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from lm_eval_contrans.artifact import is_transplant_file, load_steering, save_transplants
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, parse_model_spec
from lm_eval_contrans.paths import writable_output
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.pipeline.build import BuildPlan, finish_build, plan_request, record_sources
from lm_eval_contrans.request import SteeringRequest, parse_alphas, spread
from lm_eval_contrans.provenance import Steering, Transplant, check_against_target, directions_of
from lm_eval_contrans.vectors import ForeignVector, read_vector, target_directions

logger = logging.getLogger(__name__)


def alphas_for(alpha, count: int) -> list[float]:
    """One alpha for every transplant, or one each (`a+b`, or a list): the Python boundary of
    `ConTransLM.use_transplants`, read as `SteeringRequest` reads `alpha`."""
    return spread(parse_alphas(alpha), count, "alpha")


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


@dataclass(frozen=True)
class Ready:
    """What an engine steers with: the transplants (or bare directions) checked against the target, their
    directions, one alpha each, where they are added, and the target's facts they were checked against."""

    transplants: list[Steering]
    directions: list[Direction]
    alphas: list[float]
    positions: str
    facts: dict

    def info(self) -> dict:
        """The provenance lm-eval's results record (`config.model_info`)."""
        return transplant_info(self.transplants, self.alphas, self.positions)


@dataclass
class Prepared:
    """A request's transplants, ready up to what needs the target: `finish` completes them, `ready` checks them
    against the target and saves them where asked."""

    request: SteeringRequest
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

    def ready(self, model=None, tokenizer=None) -> Ready:
        """`finish`, then what every engine does with it: check it against the target (`model`, or its config
        where the engine loads it itself) and save it to `save_vector`."""
        given = self.finish(model, tokenizer)
        facts = target_facts(self.target, model)
        directions = check_for_target(given, self.alphas, target=self.target.name, facts=facts,
                                      strict_name=self.request.check_target_name)
        if self.request.save_vector:
            save_transplants(given, self.request.save_vector, "save_vector")
            logger.info("saved transplant to %s", self.request.save_vector)
        return Ready(given, directions, list(self.alphas), self.request.positions, facts)


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


def target_name(target: str | None, pretrained: str | None) -> str:
    """The model to steer: `target`, or lm-eval's usual `pretrained` for it."""
    if target is not None and pretrained is not None and target != pretrained:
        raise ConTransError("target", f"given twice with different values ({target!r} and pretrained={pretrained!r})")
    target = target if target is not None else pretrained
    if not isinstance(target, str) or not target:
        raise ConTransError("target", "name the model to steer: target=<hub id | folder | file.gguf>")
    return target


def prepare(request: SteeringRequest, target: ModelSpec, *, dtype: str = "float32",
            device: str | None = None) -> Prepared:
    """Do what the request needs before the target loads: read `vector=`, or plan the build (its concepts, or
    `source_vector=` ported) and record the source, freed before the target loads. `target`: as the engine
    loads it (`engine_target_spec`)."""
    if request.save_vector:  # before the build, not after it
        writable_output(request.save_vector, "save_vector")
    if request.vector is None and request.source is None:
        raise ConTransError("source", "give source=<model> to build the transplant, or vector=<artifact.safetensors> to load one")
    if request.vector is not None:
        if request.source_vector is not None:  # one would be dropped, the steering not the one asked for
            raise ConTransError("source_vector", "give vector= (steering the target as it is) or source_vector= "
                                                 "(another tool's vector for the source, ported through the map), "
                                                 "not both")
        return _prepare_given(request, target)
    # trust_remote_code=True: the user trusts the code of both models they named
    source = parse_model_spec(request.source, "source", block_path=request.source_block_path,
                              trust_remote_code=target.trust_remote_code)
    request = dataclasses.replace(request, source=source, target=target)
    if request.source_vector is not None:  # another tool's vector for the source, ported through the map
        plan = plan_request(request, dtype=dtype, device=device)
        alphas = request.per_concept("alpha", len(plan.concepts))
    else:
        alphas = request.per_concept("alpha", len(request.concept))  # before any model loads
        plan = plan_request(request, dtype=dtype, device=device)
    return Prepared(request=request, target=target, alphas=alphas, plan=plan, sources=record_sources(plan))


def _prepare_given(request: SteeringRequest, target: ModelSpec) -> Prepared:
    block = request.per_concept("target_layer", 1)[0]  # places a bare tensor
    given = read_steering_file(request.vector, block, "vector")
    if request.source is not None:
        logger.warning("vector= given: the source model %s is not loaded", request.source)
    if isinstance(given, ForeignVector):  # made for the target itself by another tool
        if request.save_vector:
            raise ConTransError("save_vector", f"{given.file} was made for the target by another tool: nothing is "
                                               "built from it, so there is no artifact to save (the file steers as it is)")
        if request.alpha_unit not in (None, "raw"):
            raise ConTransError("alpha_unit", "a vector made for the target by another tool steers in its own "
                                              "units (alpha_unit=raw); port it with source= and source_vector= "
                                              "for residual units")
        return Prepared(request=request, target=target, alphas=request.per_concept("alpha", len(given.directions)),
                        foreign=given)
    if request.save_vector and any(isinstance(item, Direction) for item in given):
        raise ConTransError("save_vector", "a bare Direction is not a fitted transplant: there is no artifact to save")
    if request.alpha_unit is not None:
        unit = request.alpha_unit
        given = [item.with_steering(alpha_unit=unit) if isinstance(item, Transplant) else dataclasses.replace(item, alpha_unit=unit)
                 for item in given]
    return Prepared(request=request, target=target, alphas=request.per_concept("alpha", len(given)), transplants=given)


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
