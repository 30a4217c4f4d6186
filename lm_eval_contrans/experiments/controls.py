"""Control vectors that every steering result is asked for.

- random: a seeded Gaussian direction with the transplanted vector's norm, at the same target block;
- own: the target's own concept vector from the same concept set at the same block (the
  no-transfer upper bound: what steering could do if no map were needed);
- shuffled labels: a concept set with the same texts, each pair's sides swapped on a seeded coin, built
  through the same map: what "any push among these texts" does without the concept's labels.

The first two are bare `Direction`s steered in the transplant's alpha unit (so alpha means the same push),
with an origin that says what they are: no map, no held-out R² or concept hash borrowed from the transplant.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from lm_eval_contrans.concepts import ConceptSet
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.loading import ModelSpec
from lm_eval_contrans.pipeline.states import StateRequest, record_concept_states
from lm_eval_contrans.provenance import Transplant, directions_of


def random_control(steering: Transplant | Direction, seed: int = 0) -> Direction:
    """A seeded Gaussian direction with the norm of `steering`'s vector, at its block, in its alpha unit."""
    given, = directions_of([steering])
    direction = torch.randn(given.vector.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    vector = (direction / direction.norm() * given.vector.double().norm()).float()
    return _control(given, vector, f"random (seed {seed})", {"control": "random", "seed": seed, "norm_of": given.name})


def target_own_vector(
    transplant: Transplant, concept: ConceptSet, anchor_texts: list[str], *, dtype: str = "float32",
    device: str | None = None, target: str | ModelSpec | None = None,
) -> torch.Tensor:
    """The target's own concept vector at the transplant's target block (cached like any source side);
    `target`: the target as loaded (default: the transplant's target name)."""
    states = record_concept_states(target or transplant.target, [StateRequest(concept, transplant.target_layer)],
                                   anchor_texts=anchor_texts, dtype=dtype, device=device, role="target")
    return states[0].concept_vector


def own_control(transplant: Transplant, own_vector: torch.Tensor) -> Direction:
    """The target's own concept vector (`target_own_vector`) where the transplant steers, in its alpha unit."""
    return _control(transplant.direction, own_vector.float(), f"{transplant.concept} (target's own)",
                    {"control": "target's own vector", "concept": transplant.concept,
                     "concept_hash": transplant.concept_hash, "model": transplant.target})


def _control(steering: Direction, vector: torch.Tensor, name: str, origin: dict) -> Direction:
    return Direction(name, steering.block, vector, steering.alpha_unit, steering.residual_norm, steering.alpha_share,
                     origin)


def shuffled_labels(concept: ConceptSet, seed: int = 0) -> ConceptSet:
    """`concept` with each pair's sides swapped on a fair coin (seeded), named `<name>-shuffled`."""
    rng = random.Random(seed)
    pairs = [(negative, positive) if rng.random() < 0.5 else (positive, negative)
             for positive, negative in zip(concept.positives, concept.negatives)]
    return dataclasses.replace(concept, name=f"{concept.name}-shuffled", positives=tuple(p for p, _ in pairs),
                               negatives=tuple(n for _, n in pairs), source="")


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=0))
