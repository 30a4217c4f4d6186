"""Score several continuations of one context with a single pass over the context.

Multiple-choice tasks ask for log p(choice | context) for every choice of a document, and the
context (a few-shot prompt of hundreds of tokens, for TruthfulQA) is the same each time. HFLM runs
context + choice in full for every choice; here the context runs once, its key/value cache is
copied for the choices, and only the choice tokens run again. The scores are those of the full
pass up to floating-point rounding (a cached pass multiplies in a different order).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from lm_eval_contrans.activations import input_device


def group_by_context(requests: Iterable[tuple]) -> dict[tuple[int, ...], list[int]]:
    """Indices of lm-eval loglikelihood requests `(strings, context_tokens, continuation_tokens)`,
    grouped by identical context tokens, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (_, context, _) in enumerate(requests):
        groups.setdefault(tuple(context), []).append(index)
    return groups


@functools.cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.x names the key/value cache `cache`; earlier versions `past_key_values`
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def cache_can_be_shared(model: torch.nn.Module) -> bool:
    """Whether one context's cache serves several choices for this model: decided by scoring two short
    continuations of a short context both ways and comparing. Attention caches pass; state-space and
    hybrid models (Mamba, Jamba, Falcon-H1, ...) keep recurrent or convolution state that a copied
    cache does not carry correctly (or cannot be repeated at all), and take the full passes instead."""
    context, continuations = [1, 2, 3], [[4, 5], [6, 7, 8]]
    try:
        shared = score_continuations(model, context, continuations, batch_size=2, logits_to_keep=False)
    except Exception:  # noqa: BLE001 - a cache that cannot be copied or repeated: no sharing
        return False
    device = input_device(model)
    tolerance = rounding_tolerance(model)
    for (score, _), tokens in zip(shared, continuations):
        full = model(input_ids=torch.tensor([context + tokens], device=device)).logits[0].float().log_softmax(-1)
        expected = float(sum(full[len(context) + i - 1, token] for i, token in enumerate(tokens)))
        if not abs(score - expected) <= tolerance * max(1.0, abs(expected)):
            return False
    return True


def rounding_tolerance(model: torch.nn.Module) -> float:
    """How far (relative) two ways of computing the same score may differ by rounding alone: 1e-3, or
    4 units in the last place of the model's floating-point type where that is coarser (0.031 in
    bfloat16). On the packaged pair in bfloat16 rounding alone moved the check's scores by up to 0.010,
    and scoring the continuations without their context moved them by 0.10-0.47: the bound sits about
    three times from each."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return max(1e-3, 4 * torch.finfo(dtype).eps)


@torch.no_grad()
def score_continuations(
    model: torch.nn.Module,
    context: list[int],
    continuations: list[list[int]],
    *,
    batch_size: int,
    softmax_dtype: torch.dtype | None = None,
    logits_to_keep: bool = True,
    around_forward: Callable = torch.no_grad,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens | context), whether every token is the argmax) per continuation.

    `around_forward()` is entered around each forward pass (steering hooks, autocast).
    `logits_to_keep`: whether the model accepts that argument (then the context pass projects
    only its last position through the output layer)."""
    if not context or any(not tokens for tokens in continuations):
        raise ValueError("a context and every continuation need at least one token")
    device = input_device(model)
    cache_argument = _cache_argument(type(model))
    keep = {"logits_to_keep": 1} if logits_to_keep else {}
    with around_forward():
        output = model(input_ids=torch.tensor([context], device=device), use_cache=True, **keep)
    first = F.log_softmax(output.logits[0, -1], dim=-1, dtype=softmax_dtype)
    context_cache = getattr(output, cache_argument)
    del output

    results: list[tuple[float, bool]] = []
    for start in range(0, len(continuations), max(1, batch_size)):
        chunk = continuations[start:start + max(1, batch_size)]
        width = max(len(tokens) for tokens in chunk) - 1  # the last token of each is scored, never fed
        later = None
        if width > 0:
            # Right padding follows every real token, so causal attention keeps it out of their logits.
            inputs = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
            for row, tokens in enumerate(chunk):
                inputs[row, :len(tokens) - 1] = torch.tensor(tokens[:-1], device=device)
            cache = copy.deepcopy(context_cache)
            cache.batch_repeat_interleave(len(chunk))
            mask = torch.ones((len(chunk), len(context) + width), dtype=torch.long, device=device)
            with around_forward():
                logits = model(input_ids=inputs, attention_mask=mask, use_cache=True, **{cache_argument: cache}).logits
            later = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
            del logits, cache
        for row, tokens in enumerate(chunk):
            steps = first.unsqueeze(0) if later is None else torch.cat([first.unsqueeze(0), later[row, :len(tokens) - 1]])
            targets = torch.tensor(tokens, device=device)
            log_probs = steps.gather(1, targets.unsqueeze(1)).squeeze(1)
            results.append((float(log_probs.sum()), bool((steps.argmax(dim=-1) == targets).all())))
    return results
