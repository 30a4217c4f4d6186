"""HFLM with two shortcuts for loglikelihood requests, both giving HFLM's scores.

- `share_context`: a context shared by several multi-token continuations (the choices of a
  multiple-choice document) runs once, its key/value cache reused for each choice (see
  shared_context.py). Scores equal HFLM's up to float rounding. It runs far fewer tokens, but in
  two small passes per document instead of HFLM's wide batches: 1.75-2.3 x faster on an idle
  2-core CPU, 0.15-0.54 x on an H100 (bench/README.md). So `auto`, the default, shares on the CPU
  only.
- Loglikelihood batches that are not shared project through the output layer only the final
  positions that hold continuation tokens (`score_continuations_only`; see `_scored_window`).
  Scores equal HFLM's bit for bit. With Gemma 3's 262k-word vocabulary this is 2.4-3.2 x on
  TruthfulQA (bench/perf/scored_window.py).

`ConTransLM` is this class plus steering; the bench scripts and `contrans compare` score their
unsteered rows with it too, so that every row of a table takes the same numerical path.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.hf.shared_context import cache_can_be_shared, group_by_context, score_continuations

logger = logging.getLogger(__name__)

# The shortcuts lean on HFLM internals (_loglikelihood_tokens' right padding and ctx_len arithmetic,
# _model_call, cache_hook), read and tested in these lm-eval versions. On any other the class
# scores exactly as HFLM does, so a changed internal cannot give silently different scores.
TESTED_LM_EVAL_VERSIONS = ("0.4.13",)
LM_EVAL_VERSION = importlib.metadata.version("lm_eval")


def shortcuts_supported() -> bool:
    return LM_EVAL_VERSION in TESTED_LM_EVAL_VERSIONS


@functools.cache
def _warn_untested_lm_eval(version: str) -> None:
    logger.warning("lm-eval %s is not one this package's scoring shortcuts were tested with (%s): scoring with "
                   "HFLM's own full passes (same scores, slower)", version, ", ".join(TESTED_LM_EVAL_VERSIONS))


def check_share_context(value) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    raise ConTransError("share_context", f"expected auto, True or False, got {value!r}")


class FastScoringHFLM(HFLM):
    """HFLM (every argument its own) plus `share_context`: auto (the default: on when the model is on
    the CPU), True or False; and `score_continuations_only` (default True; False projects every
    position as HFLM does, for comparison); see the module docstring."""

    _longest_continuation: int | None = None  # set while HFLM's _loglikelihood_tokens runs

    def __init__(self, *args, share_context: bool | str = "auto", score_continuations_only: bool = True,
                 **kwargs) -> None:
        check_share_context(share_context)
        super().__init__(*args, **kwargs)
        self.score_continuations_only = bool(score_continuations_only)
        self.shortcuts = shortcuts_supported()
        if not self.shortcuts:
            _warn_untested_lm_eval(LM_EVAL_VERSION)
        wanted = self.device.type == "cpu" if share_context == "auto" else share_context
        self.share_context = (bool(wanted) and self.shortcuts and self.backend == "causal"
                              and cache_can_be_shared(self.model))
        if share_context is True and self.shortcuts and not self.share_context:
            logger.warning("share_context=True: %s's cache cannot be shared between choices; scoring with "
                           "full passes", type(self.model).__name__)
        self._accepts_logits_to_keep = (self.shortcuts and self.backend == "causal"
                                        and "logits_to_keep" in inspect.signature(self.model.forward).parameters)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        shared = self._shared_context_groups(requests)
        in_groups = {index for indices in shared for index in indices}
        rest = [index for index in range(len(requests)) if index not in in_groups]
        results: list = [None] * len(requests)
        if rest:
            scored = self._score_full_passes([requests[index] for index in rest], disable_tqdm, override_bs)
            for index, answer in zip(rest, scored, strict=True):
                results[index] = answer
        progress = tqdm(total=len(in_groups), desc="Scoring choices of shared contexts",
                        disable=disable_tqdm or self.rank != 0 or not in_groups)
        batch_size = self.batch_size if isinstance(self.batch_size, int) else override_bs or 64
        for indices in shared:
            context = requests[indices[0]][1]
            scored = score_continuations(self.model, context, [requests[index][2] for index in indices],
                                         batch_size=batch_size, softmax_dtype=self.softmax_dtype,
                                         logits_to_keep=self._accepts_logits_to_keep, around_forward=self._forward_pass)
            for index, answer in zip(indices, scored, strict=True):
                results[index] = answer
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            progress.update(len(indices))
        progress.close()
        return results

    def _score_full_passes(self, requests, disable_tqdm: bool, override_bs: int | None) -> list[tuple[float, bool]]:
        """Requests scored in full passes (not sharing a context): HFLM's batches, with the scored window."""
        # HFLM scores only continuation tokens; knowing the longest one lets _model_call project
        # just the positions that hold them (see _scored_window).
        self._longest_continuation = max(len(continuation) for _, _, continuation in requests)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._longest_continuation = None

    def _shared_context_groups(self, requests) -> list[list[int]]:
        """Groups of requests worth scoring with one pass over their common context.

        A group is worth it when the context tokens it saves, (n - 1) x context, are at least all
        the continuation tokens it still runs: the long few-shot prompts of TruthfulQA, not the
        one-token prompts of loglikelihood_rolling's first windows. One-token continuations stay
        with HFLM, which already runs one row for all of them (its logits cache); so do requests it
        would truncate."""
        if not self.share_context or self.backend != "causal" or not self._can_share_context():
            return []
        groups = []
        for context, indices in group_by_context(requests).items():
            lengths = [len(requests[index][2]) for index in indices]
            if (len(indices) > 1 and max(lengths) > 1 and (len(indices) - 1) * len(context) >= sum(lengths)
                    and len(context) + max(lengths) <= self.max_length + 1):
                groups.append(indices)
        return groups

    def _can_share_context(self) -> bool:
        """Whether splitting a request into a context pass and a choices' pass changes nothing else."""
        return True

    def _around_forward(self):
        """A context entered around every forward pass of the model (subclasses: steering hooks)."""
        return nullcontext()

    @contextmanager
    def _forward_pass(self):
        """What HFLM's _model_call wraps a forward pass in, plus `_around_forward`."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None), self._around_forward():
            yield

    def _scored_window(self, inps: torch.Tensor) -> int | None:
        """How many final positions of a right-padded loglikelihood batch hold every scored token.

        HFLM pads with id 0 on the right and reads request i's continuation logits from
        [len_i - len(continuation_i), len_i), counted back from the end of the logits it gets
        (its `ctx_len` arithmetic), so returning only the last `window` positions scores the same.
        A real trailing token 0 only makes the inferred length shorter and the window wider.
        With a 262k vocabulary the output projection and log-softmax over every prompt position
        cost more than the blocks themselves (bench/perf/scored_window.py)."""
        longest = self._longest_continuation
        if not self.score_continuations_only or longest is None or not self._accepts_logits_to_keep:
            return None
        real = inps != 0
        if not bool(real.any(dim=1).all()):
            return None
        padded_length = inps.shape[1]
        lengths = padded_length - real.flip(1).int().argmax(dim=1)
        window = padded_length - int(lengths.min()) + longest
        return window if window < padded_length else None

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None, around=None) -> torch.Tensor:
        """HFLM's, with the scored window; `around`: the context entered around the pass instead of
        `_around_forward()` (the lanes of a shared pass, lanes.py)."""
        window = self._scored_window(inps) if attn_mask is None and labels is None else None
        with around if around is not None else self._around_forward(), ExitStack() as stack:
            if window is not None:
                def keep_last_logits(module, args, kwargs):
                    return args, {**kwargs, "logits_to_keep": window}

                stack.callback(self.model.register_forward_pre_hook(keep_last_logits, with_kwargs=True).remove)
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
