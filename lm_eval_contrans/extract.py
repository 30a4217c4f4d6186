"""Refine: the concept vector in the source model.

v = mean over pairs of (state(positive) - state(negative)), last-token residual state at one
decoder block; equal to mean(positives) - mean(negatives).
"""

from __future__ import annotations

import torch
from torch import nn

from lm_eval_contrans.activations import last_token_states
from lm_eval_contrans.concepts import ConceptSet


def concept_vector(
    model: nn.Module,
    tokenizer,
    concept: ConceptSet,
    layer: int,
    *,
    batch_size: int | str = "auto",
    progress: str | None = None,
) -> torch.Tensor:
    """The mean difference vector (float32, CPU) of `concept` at block `layer`."""
    texts = [*concept.positives, *concept.negatives]
    states = last_token_states(
        model, tokenizer, texts, [layer], batch_size=batch_size, progress=progress
    )[layer].double()
    count = len(concept)
    return (states[:count] - states[count:]).mean(0).float()
