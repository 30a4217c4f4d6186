"""`lm_eval --model contrans`: HFLM with a transplanted concept added at one target block.

Thin by design: loading, batching and generation are HFLM's; the transplant is built (or loaded)
by the plain-Python pipeline at construction and applied by `transplant.steer` around every forward
pass (`_model_call` serves loglikelihood and loglikelihood_rolling, `_model_generate` serves
generate_until). Loglikelihood requests take FastScoringHFLM's shortcuts (scoring.py): only scored
positions go through the output layer, and on a CPU a shared context runs once (share_context).
Several steerings at one block can be scored together (`use_lanes`, lanes.py): the blocks before it run
once for all of them; `contrans compare` scores its consecutive steered rows so.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import ExitStack, contextmanager

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lm_eval_contrans.blocks import use_block_path
from lm_eval_contrans.cache import content_key
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.hf.lanes import BROKEN, lane_vectors, lanes_work, score_lanes
from lm_eval_contrans.loading import (
    evaluation_device, pretrained_path, release_read_only_tokenizers,
)
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.hf.scoring import FastScoringHFLM, check_share_context
from lm_eval_contrans.request import SteeringRequest
from lm_eval_contrans.transplant import not_finite, stop_if_not_finite
from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.transplant_args import (
    Steering, alphas_for, check_for_target, describe_steering, engine_target_spec, prepare, target_facts, target_name,
    transplant_info,
)

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
    """Model args: `target` (alias `pretrained`), `share_context`, and the steering's (`SteeringRequest`:
    source, concept, alpha, layers, recipe fields, vector files, positions, ...); every other arg goes to
    HFLM unchanged. Several concepts at once: concept=a+b, with alpha, source_layer and target_layer
    either one value for all or `x+y`, one per concept."""

    def __init__(self, target: str | None = None, pretrained: str | None = None, device: str | None = None,
                 share_context: bool | str = "auto", **model_args) -> None:
        request = SteeringRequest.from_model_args(model_args, tuple(inspect.signature(HFLM.__init__).parameters),
                                                  target=target_name(target, pretrained))  # the rest is HFLM's
        _show_package_logs_with_lm_evals()
        self.positions = request.positions
        check_share_context(share_context)  # before the source is loaded, not after
        target_spec = engine_target_spec(request.target, request.block_path, model_args)
        build_device = evaluation_device(device)
        if as_bool(model_args.get("parallelize", False), "parallelize") and not torch.cuda.is_available():
            # HFLM would offload every weight to disk and put inputs on "cuda"; with no GPU there is
            # nothing to shard across
            logger.warning("parallelize=True: no GPU on this machine, so the model is loaded whole on the CPU")
            model_args["parallelize"] = False
        prepared = prepare(request, target_spec, dtype=model_args.get("dtype", "float32"), device=build_device)
        release_read_only_tokenizers()  # HFLM loads the target's own; a second copy would sit beside it

        # the device resolved as HFLM would (its own fallback needs a string: simple_evaluate may pass None)
        super().__init__(pretrained=pretrained_path(target_spec), device=build_device, share_context=share_context,
                         **target_spec.load_kwargs, **model_args)
        if request.block_path:
            use_block_path(self.model, request.block_path, "block_path")
        self._target_name = target_spec.name
        self._check_target_name = request.check_target_name
        self._lanes: list[tuple[list[Direction], list[float]]] = []  # use_lanes
        self._answers: dict[str, dict] = {}  # each lane's steering digest -> {(context, continuation): answer}
        ready = prepared.ready(self.model, self.tokenizer)  # checked against the loaded target, saved where asked
        self.use_transplants(ready.transplants, ready.alphas)

    @classmethod
    def from_transplants(cls, target: str, transplants: Steering | list[Steering], alpha: float | str | list = 1.0,
                         **kwargs) -> ConTransLM:
        """The target steered by transplants (or bare directions) already in memory, checked against it like
        an artifact file."""
        return cls(target=target, vector=transplants, alpha=alpha, **kwargs)

    def use_transplants(self, transplants: Steering | list[Steering], alphas: float | str | list) -> None:
        """Steer with these transplants (or bare directions) from now on (one alpha for all, or one each),
        after checking each against the loaded target: one load of the target serves a whole grid of vectors."""
        transplants = [transplants] if isinstance(transplants, (Transplant, Direction)) else list(transplants)
        alphas = alphas_for(alphas, len(transplants))
        self.directions = self._checked(transplants, alphas)
        self.transplants, self.alphas = transplants, alphas
        self._steering_digest = steering_digest(self.directions, alphas)

    def use_lanes(self, steerings: list[tuple[Steering | list[Steering], float | str | list]]) -> None:
        """Score these steerings (transplants, alphas) together from now on, the one in use (`use_transplants`)
        among them: a loglikelihood request is answered for every one of them in passes that run the blocks
        before their common block once (lanes.py), and the others' answers are kept until each is in use.
        Where they do not all steer one block, positions is not "all", or this model's blocks cannot share a
        pass (`lanes.lanes_work`), each is scored alone, as without lanes; [] ends them."""
        lanes = {}
        for transplants, alphas in steerings:
            transplants = [transplants] if isinstance(transplants, (Transplant, Direction)) else list(transplants)
            alphas = alphas_for(alphas, len(transplants))
            directions = self._checked(transplants, alphas)
            lanes.setdefault(steering_digest(directions, alphas), (directions, alphas))
        if list(lanes) != list(self._answers):
            self._lanes, self._answers = list(lanes.values()), {digest: {} for digest in lanes}

    def _checked(self, transplants: list[Steering], alphas: list[float]) -> list[Direction]:
        return check_for_target(transplants, alphas, target=self._target_name, facts=target_facts(None, self.model),
                                strict_name=self._check_target_name)

    def _lane_block(self) -> int | None:
        """The block every lane steers, where the steering in use is scored in lanes; else None."""
        if len(self._lanes) < 2 or self._steering_digest not in self._answers or self.positions != "all" \
                or not self.shortcuts or self.backend != "causal":
            return None
        blocks = {direction.block for directions, alphas in self._lanes
                  for direction, alpha in zip(directions, alphas) if alpha != 0.0}
        if len(blocks) != 1 or not lanes_work(self.model, next(iter(blocks))):
            return None
        return next(iter(blocks))

    def _score_full_passes(self, requests, disable_tqdm: bool, override_bs: int | None) -> list[tuple[float, bool]]:
        block = self._lane_block()
        if block is None:
            return super()._score_full_passes(requests, disable_tqdm, override_bs)
        keys = [(tuple(context), tuple(continuation)) for _, context, continuation in requests]
        missing = {key: index for index, key in enumerate(keys) if key not in self._answers[self._steering_digest]}
        if missing:
            wanting = [digest for digest, answers in self._answers.items() if any(key not in answers for key in missing)]
            lanes = dict(zip(self._answers, self._lanes))
            rows = self.batch_size if isinstance(self.batch_size, int) else override_bs or self._detect_batch_size(
                [max(requests, key=lambda request: len(request[1]) + len(request[2]))])
            scored = score_lanes(self, [requests[index] for index in missing.values()], block,
                                 [lane_vectors(*lanes[digest]) for digest in wanting], rows, disable_tqdm)
            for digest, answers in zip(wanting, scored, strict=True):
                self._answers[digest].update(zip(missing, answers, strict=True))
        own = self._answers[self._steering_digest]
        results = []
        for (strings, _, _), key in zip(requests, keys, strict=True):
            if own[key] is BROKEN:
                raise not_finite(describe_steering(self.directions, self.alphas))
            if strings is not None:  # as HFLM: loglikelihood_rolling's windows are cached per document instead
                self.cache_hook.add_partial("loglikelihood", strings, own[key])
            results.append(own[key])
        return results

    # One concept is the common case: `transplant` / `alpha` read it (use_transplants changes it).
    @property
    def transplant(self) -> Steering:
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
            for direction, alpha in zip(self.directions, self.alphas):
                stack.enter_context(direction.apply(self.model, alpha, self.positions))
            steered = lambda: describe_steering(self.directions, self.alphas)  # noqa: E731 (said on an error only)
            stack.enter_context(stop_if_not_finite(self.model, steered))
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
        return {**super().get_model_info(), "contrans": transplant_info(self.transplants, self.alphas, self.positions)}


def steering_digest(directions: list[Direction], alphas: list[float]) -> str:
    """What identifies a steering's answers: each direction's steering key with its alpha."""
    return content_key({"steering": [[direction.steering_key(), float(alpha)] for direction, alpha in
                                     zip(directions, alphas, strict=True)]})
