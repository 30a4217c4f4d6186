"""`lm_eval --model contrans`: HFLM with a transplanted concept added at one target block.

Thin by design: loading, batching and generation are HFLM's; the transplant is built (or loaded)
by the plain-Python pipeline at construction and applied by `steering.steer` around every forward
pass (`_model_call` serves loglikelihood and loglikelihood_rolling, `_model_generate` serves
generate_until).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.artifact import Transplant, as_dict, check_against_target, load_transplants, save_transplants
from lm_eval_contrans.alignment import check_anchor_count, check_ridge
from lm_eval_contrans.build import load_source_sides, model_layer_count, model_type_of, transplant_into
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import default_device, parse_model_spec, pretrained_path
from lm_eval_contrans.steering import check_alpha, check_positions, steer

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


def split_per_concept(value, count: int, argument: str) -> list:
    """`a+b` -> [a, b]; a single value applies to every concept."""
    parts = str(value).split("+") if isinstance(value, str) and "+" in value else [value]
    if len(parts) == 1:
        return parts * count
    if len(parts) != count:
        raise ConTransError(argument, f"{len(parts)} values ({value!r}) for {count} concepts; give one, or one per concept")
    return [part.strip() if isinstance(part, str) else part for part in parts]


@register_model("contrans")
class ConTransLM(HFLM):
    """Model args: target (alias pretrained), source, concept, alpha, source_layer, target_layer,
    anchors, ridge, vector, save_vector, build_batch_size, source_dtype, check_target_name, positions;
    every other arg goes to HFLM unchanged. Several concepts at once: concept=a+b, with alpha,
    source_layer and target_layer either one value for all or `x+y`, one per concept."""

    def __init__(
        self,
        target: str | None = None,
        source: str | None = None,
        concept: str = "sentiment",
        alpha: float | str = 1.0,
        source_layer: int | float | str | None = None,
        target_layer: int | float | str | None = None,
        anchors: str | None = None,
        ridge: float = 0.0,
        vector: str | None = None,
        save_vector: str | None = None,
        build_batch_size: int | str = "auto",
        source_dtype: str | None = None,
        check_target_name: bool = True,
        positions: str = "all",
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
        if vector is None and source is None:
            raise ConTransError("source", "give source=<model> to build the transplant, or vector=<artifact.safetensors> to load one")
        target_spec = parse_model_spec(target, "target")
        device = device or default_device()

        transplants: list[Transplant] = []
        if vector is not None:
            transplants = load_transplants(vector, "vector")
            if source is not None:
                logger.warning("vector= given: the source model %s is not loaded", source)
            self.alphas = [check_alpha(value) for value in split_per_concept(alpha, len(transplants), "alpha")]
        else:
            ridge = check_ridge(ridge)
            concept_names = str(concept).split("+")
            concept_sets = [load_concept_set(name.strip()) for name in concept_names]
            self.alphas = [check_alpha(value) for value in split_per_concept(alpha, len(concept_sets), "alpha")]
            anchor_texts, anchors_name = load_anchor_texts(anchors)
            sides = load_source_sides(
                source, concepts=concept_sets, anchor_texts=anchor_texts,
                layers=split_per_concept(source_layer, len(concept_sets), "source_layer"),
                dtype=source_dtype or kwargs.get("dtype", "float32"), device=device, batch_size=build_batch_size,
            )  # the source model is freed when this returns
            for side in sides:
                check_anchor_count(len(anchor_texts), int(side.anchor_states.shape[1]), ridge)

        super().__init__(pretrained=pretrained_path(target_spec), device=device, **kwargs)

        if not transplants:
            for side, concept_set, layer in zip(sides, concept_sets,
                                                split_per_concept(target_layer, len(concept_sets), "target_layer")):
                transplants.append(transplant_into(
                    side, self.model, self.tokenizer, target_spec=target_spec, concept=concept_set,
                    anchor_texts=anchor_texts, anchors_name=anchors_name, layer=layer, ridge=ridge,
                    batch_size=build_batch_size,
                ))
                logger.info("built transplant:\n%s", transplants[-1].summary())
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

    def _on_device(self, vector: torch.Tensor) -> torch.Tensor:
        # Placed once: a host-to-device copy inside every forward pass would stall the GPU.
        placed = getattr(self, "_placed_vectors", {})
        self._placed_vectors = placed
        key = id(vector)
        if key not in placed or placed[key][0] is not vector:
            placed[key] = (vector, vector.to(self.device))
        return placed[key][1]

    @contextmanager
    def _steering(self):
        with ExitStack() as stack:
            for transplant, alpha in zip(self.transplants, self.alphas):
                stack.enter_context(steer(self.model, transplant.target_layer, self._on_device(transplant.vector),
                                          alpha, self.positions))
            yield

    def _model_call(self, *args, **kwargs) -> torch.Tensor:
        with self._steering():
            return super()._model_call(*args, **kwargs)

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
