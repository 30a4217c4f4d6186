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
    layer: int | list[int],
    *,
    batch_size: int | str = "auto",
    progress: str | None = None,
) -> torch.Tensor | dict[int, torch.Tensor]:
    """Refine: the mean over pairs of (positive − negative) last-token residual state.

    Args:
        model, tokenizer: the source as loaded.
        concept: the pairs.
        layer: a block index, or a list of them (recorded in one pass).
        batch_size: texts per pass, or "auto" (batches bounded in padded tokens).
        progress: a progress-bar description (None: no bar).

    Returns:
        The vector (float32, CPU) at `layer`; for a list, {block: vector}.
    """
    layers = layer if isinstance(layer, list) else [layer]
    texts = [*concept.positives, *concept.negatives]
    recorded = last_token_states(model, tokenizer, texts, layers, batch_size=batch_size, progress=progress)
    count = len(concept)
    vectors = {index: (states.double()[:count] - states.double()[count:]).mean(0).float()
               for index, states in recorded.items()}
    return vectors if isinstance(layer, list) else vectors[layer]
