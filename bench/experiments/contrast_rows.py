"""Contrast rows in the map (issue 21, lever 2): fit W on the neutral anchors and on the
(positive - negative) last-token state differences of teaching pairs, which share no text with the
concept the map is for.

W minimises  |(S - mean S) W - (T - mean T)|^2 + w |D_s W - D_t|^2,  S, T the anchor token states
at the transplant's blocks, D_s, D_t the teaching pairs' differences in the two models, and w set so
that the contrast rows carry a fraction lambda of the anchors' source sum of squares (lambda 0: the
default map). Teachings:
- `other sets`: concepts of other kinds. For an emotion, sentiment, honesty and toxicity (the six
  emotion sets share their scenarios); for sentiment, honesty or toxicity, every other set.
- `other emotions` (emotions only): the other emotion sets' pairs in which neither side is a text of
  the emotion's set: contrasts between the other five emotions, on the scenarios its pairs do not use;
- `other sets + other emotions`: both.
An emotion's teaching and lambda are chosen without it (`choose_for_emotions`): the setting whose
maps, rebuilt for each other emotion without a text of either emotion's set, carry the other five
best (mean cosine to the target's own vectors).
"""

from __future__ import annotations

import torch

from emotion_steering import EMOTIONS
from lm_eval_contrans.experiments.controls import cosine
from map_levers import SELECTION, Carry, LeverStates, Pairs

LAMBDAS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
ACROSS, WITHIN, BOTH = "other sets", "other emotions", "other sets + other emotions"
TEACHINGS = [ACROSS, WITHIN, BOTH]


def teaching_pairs(concept: str, teaching: str, pairs: dict[str, Pairs], also_without: tuple[str, ...] = ()) -> Pairs:
    """(positive, negative) texts that may teach the map for `concept` (see the module docstring); with
    `also_without`, none of those emotions' sets' texts either."""
    if concept not in EMOTIONS:
        return [pair for name, concept_pairs in pairs.items() if name != concept for pair in concept_pairs]
    taught = [pair for name in SELECTION for pair in pairs[name]] if teaching in (ACROSS, BOTH) else []
    if teaching in (WITHIN, BOTH):
        left_out = {concept, *also_without}
        texts = {text for name in left_out for pair in pairs[name] for text in pair}
        taught += [(p, n) for name in EMOTIONS if name not in left_out for p, n in pairs[name] if p not in texts and n not in texts]
    return taught


class ContrastFit:
    """Centred least squares on anchor rows plus weighted contrast rows, from their sums."""

    def __init__(self, source: torch.Tensor, target: torch.Tensor) -> None:
        x, y = source.double(), target.double()
        self.source_mean, self.target_mean = x.mean(0), y.mean(0)
        x, y = x - self.source_mean, y - self.target_mean
        self.xx, self.xy = x.T @ x, x.T @ y

    def weight(self, source_differences: torch.Tensor | None = None, target_differences: torch.Tensor | None = None,
               fraction: float = 0.0) -> torch.Tensor:
        """W with the contrast rows carrying `fraction` of the anchors' source sum of squares."""
        gram, cross = self.xx.clone(), self.xy.clone()
        if fraction > 0:
            ds, dt = source_differences.double(), target_differences.double()
            scale = fraction * float(self.xx.trace()) / float((ds * ds).sum())
            gram += scale * ds.T @ ds
            cross += scale * ds.T @ dt
        gram.diagonal().add_(1e-9 * gram.diagonal().mean())  # the default fit's vanishing ridge
        return torch.linalg.solve(gram, cross)

    def taught(self, states: LeverStates, concept: str, teaching: str, fraction: float,
               also_without: tuple[str, ...] = ()) -> torch.Tensor:
        """W for `concept` taught by `teaching` at `fraction` (the default map when nothing may teach it)."""
        pairs = teaching_pairs(concept, teaching, states.pairs, also_without)
        if not pairs:  # two emotions' sets can cover every scenario between them: then nothing teaches
            return self.weight()
        return self.weight(states.differences("source", pairs), states.differences("target", pairs), fraction)


def carried_cosine(states: LeverStates, concept: str, weight: torch.Tensor) -> float:
    """Cosine between the concept's source vector carried by `weight` and the target's own vector."""
    return cosine(states.transplants[concept].source_vector.double() @ weight, states.own[concept])


def choose_for_emotions(states: LeverStates, fit: ContrastFit) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Each emotion's `lambda|teaching` among the within-family teachings, chosen on the other five
    emotions rebuilt without its set (see the module docstring), and the mean cosines it chose from."""
    inner = {emotion: {f"{fraction:g}|{teaching}": sum(carried_cosine(states, other, fit.taught(states, other, teaching, fraction, (emotion,)))
                                                       for other in EMOTIONS if other != emotion) / (len(EMOTIONS) - 1)
                       for fraction in LAMBDAS for teaching in (WITHIN, BOTH)} for emotion in EMOTIONS}
    return {emotion: max(scores, key=scores.get) for emotion, scores in inner.items()}, inner


def chosen_map(states: LeverStates, fit: ContrastFit, concept: str, setting: str) -> torch.Tensor:
    """W for `concept` at a `lambda|teaching` setting (as `choose_for_emotions` returns them)."""
    fraction, teaching = setting.split("|")
    return fit.taught(states, concept, teaching, float(fraction))


def emotion_carry(states: LeverStates, fit: ContrastFit, chosen: dict[str, str]) -> Carry:
    """(emotion, source vector) -> the vector through the emotion's chosen taught map."""
    return lambda emotion, vector: vector @ chosen_map(states, fit, emotion, chosen[emotion])
