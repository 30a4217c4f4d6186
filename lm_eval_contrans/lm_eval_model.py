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

import torch
from lm_eval.api.registry import register_model

from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.artifact import Transplant, as_dict, check_against_target, load_transplants, save_transplants
from lm_eval_contrans.alignment import check_anchor_count
from lm_eval_contrans.blocks import use_block_path
from lm_eval_contrans.build import (
    choose_target_layer, config_layer_count, is_auto, load_source_sides, make_recipe, model_layer_count,
    model_type_of, relative_depth, return_freed_memory_to_the_os, settle_anchor_tokens, target_block,
    transplant_into,
)
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import evaluation_device, parse_model_spec, pretrained_path
from lm_eval_contrans.scoring import FastScoringHFLM, check_share_context
from lm_eval_contrans.steering import check_alpha, check_alpha_unit, check_positions, steer

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


def _as_flag(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def split_per_concept(value, count: int, argument: str) -> list:
    """`a+b` -> [a, b]; a single value applies to every concept."""
    parts = str(value).split("+") if isinstance(value, str) and "+" in value else [value]
    if len(parts) == 1:
        return parts * count
    if len(parts) != count:
        raise ConTransError(argument, f"{len(parts)} values ({value!r}) for {count} concepts; give one, or one per concept")
    return [part.strip() if isinstance(part, str) else part for part in parts]


@register_model("contrans")
class ConTransLM(FastScoringHFLM):
    """Model args: target (alias pretrained), source, concept, alpha, recipe, source_layer,
    target_layer, anchors, anchor_tokens, map, ridge, center, alpha_unit, vector, save_vector,
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
        target_spec = parse_model_spec(target, "target", block_path=block_path)
        if vector is None:
            source = parse_model_spec(source, "source", block_path=source_block_path)
        build_device = evaluation_device(device)
        if _as_flag(kwargs.get("parallelize", False)) and not torch.cuda.is_available():
            # HFLM would offload every weight to disk and put inputs on "cuda"; with no GPU there is
            # nothing to shard across
            logger.warning("parallelize=True: no GPU on this machine, so the model is loaded whole on the CPU")
            kwargs["parallelize"] = False

        transplants: list[Transplant] = []
        if vector is not None:
            transplants = load_transplants(vector, "vector")
            if source is not None:
                logger.warning("vector= given: the source model %s is not loaded", source)
            if alpha_unit is not None:
                transplants = [dataclasses.replace(t, alpha_unit=check_alpha_unit(alpha_unit)) for t in transplants]
            self.alphas = [check_alpha(value) for value in split_per_concept(alpha, len(transplants), "alpha")]
        else:
            recipe = make_recipe(recipe, anchor_tokens=anchor_tokens, map_method=map, ridge=ridge, center=center,
                                 alpha_unit=alpha_unit)
            concept_names = str(concept).split("+")
            concept_sets = [load_concept_set(name.strip()) for name in concept_names]
            self.alphas = [check_alpha(value) for value in split_per_concept(alpha, len(concept_sets), "alpha")]
            anchor_texts, anchors_name = load_anchor_texts(anchors)
            target_layers = [value if value is not None else recipe.target_layer
                             for value in split_per_concept(target_layer, len(concept_sets), "target_layer")]
            target_sweeps = [{} for _ in concept_sets]
            recipe, anchor_note = settle_anchor_tokens(recipe, source, target_spec)  # after every argument check
            for position, layer in enumerate(target_layers):
                if is_auto(layer):  # scored before the target is loaded for evaluation
                    target_layers[position], target_sweeps[position] = choose_target_layer(
                        source, target_spec, concept=concept_sets[position], anchor_texts=anchor_texts,
                        anchors_name=anchors_name, recipe=recipe, dtype=kwargs.get("dtype", "float32"),
                        source_dtype=source_dtype, device=build_device, batch_size=build_batch_size)
            target_count = config_layer_count(pretrained_path(target_spec))
            depths = [None if target_count is None else relative_depth(target_block(layer, target_count), target_count)
                      for layer in target_layers]
            source_layers = [value if value is not None else recipe.source_layer
                             for value in split_per_concept(source_layer, len(concept_sets), "source_layer")]
            # one source load serves every concept whose target block is at the same depth
            sides = [None] * len(concept_sets)
            for depth in dict.fromkeys(depths):
                indices = [index for index, value in enumerate(depths) if value == depth]
                loaded = load_source_sides(
                    source, concepts=[concept_sets[i] for i in indices], anchor_texts=anchor_texts,
                    layers=[source_layers[i] for i in indices], dtype=source_dtype or kwargs.get("dtype", "float32"),
                    device=build_device, batch_size=build_batch_size, anchor_tokens=recipe.anchor_tokens, target_depth=depth,
                )  # the source model is freed when this returns
                for index, side in zip(indices, loaded):
                    sides[index] = side
            if recipe.anchor_tokens == "last":
                for side in sides:
                    check_anchor_count(len(anchor_texts), side.hidden_size, recipe.ridge, recipe.map_method)

        # the device resolved as HFLM would (its own fallback needs a string: simple_evaluate may pass None)
        super().__init__(pretrained=pretrained_path(target_spec), device=build_device, share_context=share_context,
                         **kwargs)
        if block_path:
            use_block_path(self.model, block_path, "block_path")

        if not transplants:
            for side, concept_set, layer, sweep in zip(sides, concept_sets, target_layers, target_sweeps):
                transplants.append(transplant_into(
                    side, self.model, self.tokenizer, target_spec=target_spec, concept=concept_set,
                    anchor_texts=anchor_texts, anchors_name=anchors_name, recipe=recipe, layer=layer,
                    batch_size=build_batch_size,
                ))
                transplants[-1].extra.update({**anchor_note, **sweep})
                logger.info("built transplant:\n%s", transplants[-1].summary())
            # the fit's temporaries are freed but glibc keeps their pages, on top of what evaluation needs
            return_freed_memory_to_the_os()
        else:
            for transplant in transplants:
                check_against_target(
                    transplant, target=target_spec.name,
                    hidden_size=self.model.get_input_embeddings().embedding_dim,
                    num_layers=model_layer_count(self.model), model_type=model_type_of(self.model),
                    strict_name=bool(check_target_name),
                )
        if save_vector:
            save_transplants(transplants, save_vector)
            logger.info("saved transplant to %s", save_vector)
        self.transplants = transplants

    # One concept is the common case: `transplant` / `alpha` read and set it directly.
    @property
    def transplant(self) -> Transplant:
        if len(self.transplants) != 1:
            raise AttributeError("several concepts are steered: use .transplants and .alphas")
        return self.transplants[0]

    @transplant.setter
    def transplant(self, value: Transplant) -> None:
        self.transplants = [value]

    @property
    def alpha(self) -> float:
        if len(self.alphas) != 1:
            raise AttributeError("several concepts are steered: use .alphas")
        return self.alphas[0]

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.alphas = [check_alpha(value)] * max(1, len(getattr(self, "transplants", [None])))

    def _on_device(self, transplant: Transplant) -> torch.Tensor:
        # Placed once: a host-to-device copy inside every forward pass would stall the GPU.
        placed = self.__dict__.setdefault("_placed_vectors", {})
        key = (id(transplant.vector), transplant.alpha_unit, transplant.residual_norm)
        if key not in placed or placed[key][0] is not transplant.vector:
            placed[key] = (transplant.vector, transplant.steering_vector().to(self.device))
        return placed[key][1]

    @contextmanager
    def _steering(self):
        with ExitStack() as stack:
            for transplant, alpha in zip(self.transplants, self.alphas):
                stack.enter_context(steer(self.model, transplant.target_layer, self._on_device(transplant),
                                          alpha, self.positions))
            yield

    def _can_share_context(self) -> bool:
        return self.positions == "all"  # "prompt" and "generated" count forward passes

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
