"""The prompt baseline: the concept's instruction as a prefix of every context, no steering."""

from __future__ import annotations

from lm_eval.api.instance import Instance

from lm_eval_contrans.hf.scoring import FastScoringHFLM


def _prefixed(requests: list[Instance], prefix: str) -> list[Instance]:
    for request in requests:
        context, *rest = request.args
        request.arguments = (prefix + context, *rest)
    return requests


class PromptBaselineLM(FastScoringHFLM):
    """FastScoringHFLM (scored as the other rows are) that prepends `prefix` to the context of
    loglikelihood and generation requests.

    loglikelihood_rolling (perplexity of a whole text) has no context to prefix and is left as is.
    """

    def __init__(self, prefix: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(_prefixed(requests, self.prefix), disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(_prefixed(requests, self.prefix), disable_tqdm=disable_tqdm)
