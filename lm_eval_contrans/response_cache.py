"""lm-eval's `--use_cache`, keyed by the steering, and lm-eval's evaluation options checked before a build.

lm-eval's response cache (`CachingLM`) keys each response on the request alone, in the database file the
user names: a run at alpha 2 followed by one at alpha -50 with the same `--use_cache` would read alpha 2's
answers back as alpha -50's. For our models (`--model contrans`, `contrans-vllm`) the file's name carries a
digest of what steers: each direction's `steering_key()` (block, vector, alpha unit), the alphas and the
positions; another steering gets another file, and the run says which in one line. The plugin installs both
when lm-eval's evaluator module is imported (_plugin.py); nothing else of lm-eval changes.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from lm_eval.api import model as lm_eval_model

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.grid import check_limit

logger = logging.getLogger("lm_eval.contrans")
OUR_MODELS = ("contrans", "contrans-vllm")


def steering_digest(lm: Any) -> str | None:
    """A digest of how one of our models steers (None for any other model, or one without directions).

    Args:
        lm: an lm-eval model.

    Returns:
        16 hex digits of the directions' steering keys, the alphas and the positions.
    """
    if not type(lm).__module__.startswith("lm_eval_contrans.") or not hasattr(lm, "directions"):
        return None
    from lm_eval_contrans.cache import content_key

    described = {"directions": [direction.steering_key() for direction in lm.directions],
                 "alphas": [float(alpha) for alpha in lm.alphas], "positions": getattr(lm, "positions", "all")}
    if getattr(lm, "request_steering", None) is not None:  # a vLLM engine whose requests are tagged (use_steering)
        described["request"] = lm.request_steering
    return content_key(described)[:16]


def steered_cache_path(cache_db: str, digest: str) -> str:
    """lm-eval's database path with the steering's digest before its `.db` (`DB_rank0.db` -> `DB_rank0.steer-D.db`)."""
    stem = cache_db[:-3] if cache_db.endswith(".db") else cache_db
    return f"{stem}.steer-{digest}.db"


class SteeringKeyedCachingLM(lm_eval_model.CachingLM):
    """lm-eval's CachingLM, whose database for one of our models is the steering's own (see the module docstring).
    Responses are read only while the model steers as it did when the cache was opened."""

    def __init__(self, lm: Any, cache_db: str) -> None:
        self._digest = steering_digest(lm)
        if self._digest is not None:
            cache_db = steered_cache_path(cache_db, self._digest)
            logger.info("--use_cache: responses of this steering are kept in %s (named by a digest of the directions, "
                        "alphas and positions; another steering has its own file)", cache_db)
        super().__init__(lm, cache_db)

    def __getattr__(self, attr: str) -> Any:
        if attr in ("loglikelihood", "loglikelihood_rolling", "generate_until") and self._digest is not None:
            if steering_digest(self.lm) != self._digest:  # use_transplants since: these answers are another steering's
                raise ConTransError("use_cache", f"the model's steering changed after {self.cache_db} was opened for "
                                                 "another; evaluate it again with simple_evaluate(use_cache=...) so "
                                                 "that it gets its own file")
        return super().__getattr__(attr)


def check_evaluation(model: Any, model_args: Any, limit: Any, apply_chat_template: Any) -> None:
    """lm-eval's options that would fail only after our build, checked before it (for our models only).

    Args:
        model: simple_evaluate's `model` (a name or an lm-eval model).
        model_args: its model args (a string or a dict).
        limit: `--limit`.
        apply_chat_template: `--apply_chat_template`.

    Raises:
        ConTransError: `limit` is not above 0, or the target has no chat template to apply.
    """
    ours = model in OUR_MODELS if isinstance(model, str) else type(model).__module__.startswith("lm_eval_contrans.")
    if not ours:
        return
    check_limit(limit)
    if apply_chat_template is True and isinstance(model, str):  # a named template is lm-eval's to find
        target = _target_without_chat_template(model_args)
        if target is not None:
            raise ConTransError("apply_chat_template", f"the target {target} has no chat template (a base model?); "
                                                       "leave --apply_chat_template out, or steer a model that has one")


def _target_without_chat_template(model_args: Any) -> str | None:
    """The target's name if its tokenizer has no chat template (None when it has one, or cannot be read here:
    the model's own construction then says what is wrong)."""
    from lm_eval.utils import simple_parse_args_string

    from lm_eval_contrans.loading import read_only_tokenizer
    from lm_eval_contrans.transplant_args import engine_target_spec, target_name

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    try:
        spec = engine_target_spec(target_name(args.get("target"), args.get("pretrained")), args.get("block_path"), args)
        tokenizer = read_only_tokenizer(spec)
    except Exception:  # noqa: BLE001 (any failure here is the model's own construction's to report)
        return None
    return None if getattr(tokenizer, "chat_template", None) else spec.name


def install(evaluator_module: Any) -> None:
    """Key lm-eval's response cache by the steering and check its options first (idempotent)."""
    lm_eval_model.CachingLM = SteeringKeyedCachingLM
    original = evaluator_module.simple_evaluate
    if getattr(original, "_contrans", False):
        return

    @functools.wraps(original)
    def simple_evaluate(*args, **kwargs):
        check_evaluation(kwargs.get("model"), kwargs.get("model_args"), kwargs.get("limit"),
                         kwargs.get("apply_chat_template", False))
        return original(*args, **kwargs)

    simple_evaluate._contrans = True
    evaluator_module.simple_evaluate = simple_evaluate
