"""`lm_eval --model contrans`: HFLM with a transplanted concept added at one target block.

Thin by design: loading, batching and generation are HFLM's; the transplant is built (or loaded)
by the plain-Python pipeline at construction and applied by `steering.steer` around every forward
pass (`_model_call` serves loglikelihood and loglikelihood_rolling, `_model_generate` serves
generate_until).
"""

from __future__ import annotations

import logging

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.artifact import Transplant, as_dict, check_against_target, load_transplant, save_transplant
from lm_eval_contrans.alignment import check_anchor_count, check_ridge
from lm_eval_contrans.build import load_source_side, model_layer_count, model_type_of, transplant_into
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import default_device, parse_model_spec, pretrained_path
from lm_eval_contrans.steering import check_alpha, steer

# A child of lm-eval's logger, so the build diagnostics appear with lm-eval's own log lines.
logger = logging.getLogger("lm_eval.contrans")


@register_model("contrans")
class ConTransLM(HFLM):
    """Model args: target (alias pretrained), source, concept, alpha, source_layer, target_layer,
    anchors, ridge, vector, save_vector, build_batch_size, source_dtype, check_target_name;
    every other arg goes to HFLM unchanged."""

    def __init__(
        self,
        target: str | None = None,
        source: str | None = None,
        concept: str = "sentiment",
        alpha: float = 1.0,
        source_layer: int | float | str | None = None,
        target_layer: int | float | str | None = None,
        anchors: str | None = None,
        ridge: float = 0.0,
        vector: str | None = None,
        save_vector: str | None = None,
        build_batch_size: int | str = "auto",
        source_dtype: str | None = None,
        check_target_name: bool = True,
        pretrained: str | None = None,
        device: str | None = None,
        **kwargs,
    ) -> None:
        if target is not None and pretrained is not None and target != pretrained:
            raise ConTransError("target", f"given twice with different values ({target!r} and pretrained={pretrained!r})")
        target = target if target is not None else pretrained
        if not isinstance(target, str) or not target:
            raise ConTransError("target", "name the model to steer: target=<hub id | folder | file.gguf>")
        self.alpha = check_alpha(alpha)
        if vector is None and source is None:
            raise ConTransError("source", "give source=<model> to build the transplant, or vector=<artifact.safetensors> to load one")
        target_spec = parse_model_spec(target, "target")
        device = device or default_device()

        side = concept_set = anchor_texts = None
        if vector is not None:
            transplant: Transplant | None = load_transplant(vector, "vector")
            if source is not None:
                logger.warning("vector= given: the source model %s is not loaded", source)
        else:
            transplant = None
            ridge = check_ridge(ridge)
            concept_set = load_concept_set(concept)
            anchor_texts, anchors_name = load_anchor_texts(anchors)
            side = load_source_side(
                source, concept=concept_set, anchor_texts=anchor_texts, layer=source_layer,
                dtype=source_dtype or kwargs.get("dtype", "float32"), device=device,
                batch_size=build_batch_size,
            )  # the source model is freed when this returns
            check_anchor_count(len(anchor_texts), int(side.anchor_states.shape[1]), ridge)

        super().__init__(pretrained=pretrained_path(target_spec), device=device, **kwargs)

        if transplant is None:
            transplant = transplant_into(
                side, self.model, self.tokenizer, target_spec=target_spec, concept=concept_set,
                anchor_texts=anchor_texts, anchors_name=anchors_name, layer=target_layer, ridge=ridge,
                batch_size=build_batch_size,
            )
            logger.info("built transplant:\n%s", transplant.summary())
        else:
            check_against_target(
                transplant, target=target_spec.name,
                hidden_size=self.model.get_input_embeddings().embedding_dim,
                num_layers=model_layer_count(self.model),
                model_type=model_type_of(self.model),
                strict_name=bool(check_target_name),
            )
        if save_vector:
            save_transplant(transplant, save_vector)
            logger.info("saved transplant to %s", save_vector)
        self.transplant = transplant

    def _steering(self):
        return steer(self.model, self.transplant.target_layer, self.transplant.vector, self.alpha)

    def _model_call(self, *args, **kwargs) -> torch.Tensor:
        with self._steering():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args, **kwargs) -> torch.Tensor:
        with self._steering():
            return super()._model_generate(*args, **kwargs)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["contrans"] = {"alpha": self.alpha, **as_dict(self.transplant)}
        return info
