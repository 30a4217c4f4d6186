"""`lm_eval --model contrans`: HFLM with a transplanted concept added at one target block.

Thin by design: loading, batching and generation are HFLM's; the transplant is built (or loaded)
by the plain-Python pipeline at construction and applied by `steering.steer` around every forward
pass (`_model_call` serves loglikelihood and loglikelihood_rolling, `_model_generate` serves
generate_until). Loglikelihood requests take FastScoringHFLM's shortcuts (scoring.py): only scored
positions go through the output layer, and on a CPU a shared context runs once (share_context).
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from lm_eval.api.registry import register_model

from lm_eval_contrans.artifact import (
    Transplant, as_dict, check_against_target, is_transplant_file, load_transplants, save_transplants,
)
from lm_eval_contrans.blocks import use_block_path
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import (
    ModelSpec, evaluation_device, parse_model_spec, pretrained_path, release_read_only_tokenizers,
)
from lm_eval_contrans.pipeline.build import finish_build, per_concept, plan_build, plan_port, record_sources
from lm_eval_contrans.pipeline.depth import model_layer_count, model_type_of, residual_width
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.scoring import FastScoringHFLM, check_share_context
from lm_eval_contrans.steering import check_alpha, check_alpha_unit, check_positions
from lm_eval_contrans.vectors import ForeignVector, read_vector, steering_transplants

# A child of lm-eval's logger, so the build diagnostics appear with lm-eval's own log lines.
logger = logging.getLogger("lm_eval.contrans")


def _show_package_logs_with_lm_evals() -> None:
    """lm-eval configures only its own logger; route our pipeline's INFO lines through its handlers."""
    ours, theirs = logging.getLogger("lm_eval_contrans"), logging.getLogger("lm_eval")
    for handler in theirs.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    if theirs.handlers and ours.level == logging.NOTSET:
        ours.setLevel(theirs.getEffectiveLevel())
        ours.propagate = False


@register_model("contrans")
class ConTransLM(FastScoringHFLM):
    """Model args: target (alias pretrained), source, concept, alpha, recipe, source_layer,
    target_layer, anchors, anchor_tokens, map, ridge, center, alpha_unit, vector, source_vector, save_vector,
    build_batch_size, source_dtype, check_target_name, positions, share_context, block_path,
    source_block_path; every other arg goes
    to HFLM unchanged. Several concepts at once: concept=a+b, with alpha, source_layer and target_layer
    either one value for all or `x+y`, one per concept."""

    def __init__(
        self,
        target: str | None = None,
        source: str | None = None,
        concept: str = "sentiment",
        alpha: float | str = 1.0,
        recipe: str | None = None,
        source_layer: int | float | str | None = None,
        target_layer: int | float | str | None = None,
        anchors: str | None = None,
        anchor_tokens: str | None = None,
        map: str | None = None,  # noqa: A002 - the model arg users write: map=lstsq|ridge|procrustes
        ridge: float | str | None = None,
        center: bool | str | None = None,
        alpha_unit: str | None = None,
        vector: str | None = None,
        source_vector: str | None = None,
        save_vector: str | None = None,
        build_batch_size: int | str = "auto",
        source_dtype: str | None = None,
        check_target_name: bool = True,
        positions: str = "all",
        share_context: bool | str = "auto",
        block_path: str | None = None,
        source_block_path: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        **kwargs,
    ) -> None:
        if target is not None and pretrained is not None and target != pretrained:
            raise ConTransError("target", f"given twice with different values ({target!r} and pretrained={pretrained!r})")
        target = target if target is not None else pretrained
        if not isinstance(target, str) or not target:
            raise ConTransError("target", "name the model to steer: target=<hub id | folder | file.gguf>")
        _show_package_logs_with_lm_evals()
        self.positions = check_positions(positions)
        check_share_context(share_context)  # before the source is loaded, not after
        if vector is None and source is None:
            raise ConTransError("source", "give source=<model> to build the transplant, or vector=<artifact.safetensors> to load one")
        target_spec = _target_spec(target, block_path, kwargs)
        if vector is None:  # trust_remote_code=True: the user trusts the code of both models they named
            source = parse_model_spec(source, "source", block_path=source_block_path,
                                      trust_remote_code=target_spec.trust_remote_code)
        build_device = evaluation_device(device)
        if as_bool(kwargs.get("parallelize", False), "parallelize") and not torch.cuda.is_available():
            # HFLM would offload every weight to disk and put inputs on "cuda"; with no GPU there is
            # nothing to shard across
            logger.warning("parallelize=True: no GPU on this machine, so the model is loaded whole on the CPU")
            kwargs["parallelize"] = False

        foreign = None
        if vector is not None:
            transplants = _given_transplants(vector, target_layer)
            if isinstance(transplants, ForeignVector):  # made for the target itself by another tool
                foreign, transplants = transplants, []
                if alpha_unit not in (None, "raw"):
                    raise ConTransError("alpha_unit", "a vector made for the target by another tool steers in its own "
                                                      "units (alpha_unit=raw); port it with source= and source_vector= "
                                                      "for residual units")
            if source is not None:
                logger.warning("vector= given: the source model %s is not loaded", source)
            if alpha_unit is not None:
                transplants = [dataclasses.replace(t, alpha_unit=check_alpha_unit(alpha_unit)) for t in transplants]
            plan = None
            count = len(foreign.directions) if foreign is not None else len(transplants)
            alphas = [check_alpha(value) for value in per_concept(alpha, count, "alpha")]
        elif source_vector is not None:  # another tool's vector for the source, ported through the map
            plan = plan_port(source, target_spec, source_vector, source_layer=source_layer, target_layer=target_layer,
                             recipe=recipe, anchors=anchors, anchor_tokens=anchor_tokens, map_method=map, ridge=ridge,
                             center=center, alpha_unit=alpha_unit, dtype=kwargs.get("dtype", "float32"),
                             source_dtype=source_dtype, device=build_device, batch_size=build_batch_size)
            sources = record_sources(plan)
            alphas = [check_alpha(value) for value in per_concept(alpha, len(plan.concepts), "alpha")]
        else:
            count = len(concept) if isinstance(concept, (list, tuple)) else len(str(concept).split("+"))
            alphas = [check_alpha(value) for value in per_concept(alpha, count, "alpha")]  # before any model loads
            plan = plan_build(source, target_spec, concept, recipe=recipe, source_layer=source_layer,
                              target_layer=target_layer, anchors=anchors, anchor_tokens=anchor_tokens, map_method=map,
                              ridge=ridge, center=center, alpha_unit=alpha_unit, dtype=kwargs.get("dtype", "float32"),
                              source_dtype=source_dtype, device=build_device, batch_size=build_batch_size,
                              source_block_path=source_block_path)
            sources = record_sources(plan)  # the source model is freed before HFLM loads the target
        release_read_only_tokenizers()  # HFLM loads the target's own; a second copy would sit beside it

        # the device resolved as HFLM would (its own fallback needs a string: simple_evaluate may pass None)
        super().__init__(pretrained=pretrained_path(target_spec), device=build_device, share_context=share_context,
                         **target_spec.load_kwargs, **kwargs)
        if block_path:
            use_block_path(self.model, block_path, "block_path")
        self._target_name = target_spec.name
        self._check_target_name = as_bool(check_target_name, "check_target_name")
        if plan is not None:
            transplants = finish_build(plan, sources, self.model, self.tokenizer)
        elif foreign is not None:
            transplants = steering_transplants(foreign, target=target_spec.name,
                                               hidden_size=residual_width(self.model),
                                               num_layers=model_layer_count(self.model), model_type=model_type_of(self.model))
        self.use_transplants(transplants, alphas)
        if save_vector:
            save_transplants(self.transplants, save_vector)
            logger.info("saved transplant to %s", save_vector)

    @classmethod
    def from_transplants(cls, target: str, transplants: Transplant | list[Transplant], alpha: float | str | list = 1.0,
                         **kwargs) -> ConTransLM:
        """The target steered by transplants already in memory (checked against it like an artifact file)."""
        return cls(target=target, vector=transplants, alpha=alpha, **kwargs)

    def use_transplants(self, transplants: Transplant | list[Transplant], alphas: float | str | list) -> None:
        """Steer with these transplants from now on (one alpha for all, or one each), after checking
        each against the loaded target: one load of the target serves a whole grid of vectors."""
        transplants = [transplants] if isinstance(transplants, Transplant) else list(transplants)
        if not isinstance(alphas, (list, tuple)):
            alphas = per_concept(alphas, len(transplants), "alpha")
        if len(alphas) != len(transplants):
            raise ConTransError("alpha", f"{len(alphas)} values for {len(transplants)} transplants")
        for transplant in transplants:
            check_against_target(
                transplant, target=self._target_name, hidden_size=residual_width(self.model),
                num_layers=model_layer_count(self.model), model_type=model_type_of(self.model),
                strict_name=self._check_target_name,
            )
        self.transplants, self.alphas = transplants, [check_alpha(value) for value in alphas]

    # One concept is the common case: `transplant` / `alpha` read it (use_transplants changes it).
    @property
    def transplant(self) -> Transplant:
        if len(self.transplants) != 1:
            raise AttributeError("several concepts are steered: use .transplants and .alphas")
        return self.transplants[0]

    @property
    def alpha(self) -> float:
        if len(self.alphas) != 1:
            raise AttributeError("several concepts are steered: use .alphas")
        return self.alphas[0]


    @contextmanager
    def _steering(self):
        with ExitStack() as stack:
            for transplant, alpha in zip(self.transplants, self.alphas):
                stack.enter_context(transplant.apply(self.model, alpha, self.positions))
            yield

    def _can_share_context(self) -> bool:
        # a shared context's continuations extend its cache, so they would count as generated tokens
        return self.positions == "all"

    def _around_forward(self):
        return self._steering()

    def _model_generate(self, *args, **kwargs) -> torch.Tensor:
        with self._steering():
            return super()._model_generate(*args, **kwargs)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        if len(self.transplants) == 1:
            info["contrans"] = {"alpha": self.alphas[0], "positions": self.positions, **as_dict(self.transplants[0])}
        else:
            info["contrans"] = {"alpha": self.alphas, "positions": self.positions,
                                "transplants": [as_dict(t) for t in self.transplants]}
        return info


def _target_spec(target: str, block_path: str | None, hf_args: dict) -> ModelSpec:
    """The target, with the HFLM args that say which weights, tokenizer and code to load taken into it
    (`revision`, `gguf_file`, `trust_remote_code`; `peft`, `delta` and `tokenizer` stay HFLM's to apply
    too): the build reads the same weights and tokenizer, its cache keys name them, and HFLM loads the
    spec's folder (a GGUF de-quantized once, as for `target=file.gguf`)."""
    spec = parse_model_spec(target, "target", block_path=block_path)
    gguf_file = hf_args.pop("gguf_file", None)
    if gguf_file:
        if spec.gguf_file is not None:
            raise ConTransError("gguf_file", f"target={target} already names a GGUF file")
        revision = f"@{spec.revision}" if spec.revision else ""
        spec = parse_model_spec(f"{spec.pretrained.rstrip('/')}/{gguf_file}{revision}", "target", block_path=block_path)
    trust = as_bool(hf_args.pop("trust_remote_code", False), "trust_remote_code")
    # HFLM applies these to the weights it loads (the build records from that model): they name its states
    adapter = next(((kind, str(hf_args[kind])) for kind in ("peft", "delta") if hf_args.get(kind)), None)
    tokenizer = hf_args.get("tokenizer") if isinstance(hf_args.get("tokenizer"), str) else None
    return dataclasses.replace(spec.at_revision(hf_args.pop("revision", None), "target"), trust_remote_code=trust,
                               adapter=adapter, tokenizer=tokenizer)


def _given_transplants(vector, block) -> list[Transplant] | ForeignVector:
    """vector=: an artifact file, another tool's vector file for the target (`block` places a bare
    tensor), or (from Python) a Transplant or a list of them."""
    if isinstance(vector, Transplant):
        return [vector]
    if isinstance(vector, (list, tuple)) and all(isinstance(item, Transplant) for item in vector):
        return list(vector)  # an empty list: the target unsteered, until use_transplants
    if str(vector).lower().endswith(".safetensors") and is_transplant_file(vector):
        return load_transplants(vector, "vector")
    if str(vector).lower().endswith(".safetensors") and not Path(vector).is_file():
        return load_transplants(vector, "vector")  # its "not found" error
    return read_vector(vector, block, "vector")
