"""What the experiments on other ways to carry a concept vector share (issue 21, lever 2).

A lever here is another rule for turning a source concept vector into a target direction, on the
default recipe's states. `LeverStates.record` gathers what every such rule needs, once: the default
transplants of the shipped concepts (source block 26 -> target block 14 on the packaged pair), the
dense anchor token states the default map is fitted on, both models' last-token states of every
concept-set text (a concept vector is the mean of their pair differences) and the target's own
vectors. Settings of a lever are chosen without the emotions, on the mean cosine to the target's own
vector over sentiment, honesty and toxicity (`choose`); `steering_rows` then asks the emotions'
steering tasks about the chosen setting, beside the default map and the controls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from emotion_steering import EMOTIONS, FACTS, base_row, cell, emotion_task, steered
from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.experiments.grid import GridRow

SELECTION = ["sentiment", "honesty", "toxicity"]
CONCEPTS = [*SELECTION, *EMOTIONS]
Pairs = list[tuple[str, str]]


@dataclass
class LeverStates:
    transplants: dict[str, Transplant]  # the default recipe's, by concept
    pairs: dict[str, Pairs]  # (positive, negative) texts by concept
    text_states: dict[str, dict[str, torch.Tensor]]  # "source" / "target" -> text -> last-token state
    anchor_source: torch.Tensor  # dense anchor token states, paired as the default map is fitted
    anchor_target: torch.Tensor
    anchor_groups: torch.Tensor  # the anchor text of each row
    own: dict[str, torch.Tensor]  # the target's own vector by concept
    checks: dict[str, dict[str, float]]  # cosines that say the states above reproduce the build

    @classmethod
    def record(cls, source: str, target: str, concepts: list[str] = CONCEPTS, device: str = "cpu",
               target_layer: float | int | None = None) -> LeverStates:
        """The states at the blocks of the concepts' transplants, built by the default recipe (at
        `target_layer`, a depth or a block, when given)."""
        from lm_eval_contrans.activations import last_token_states
        from lm_eval_contrans.anchors import load_anchor_texts
        from lm_eval_contrans.concepts import load_concept_set
        from lm_eval_contrans.experiments.controls import cosine, target_own_vector
        from states import paired_token_states
        from lm_eval_contrans.loading import free_model, load_model
        from lm_eval_contrans.pipeline import build_transplant

        transplants = {concept: build_transplant(source, target, concept, device=device, target_layer=target_layer) for concept in concepts}
        first = transplants[concepts[0]]
        if any((t.source_layer, t.target_layer) != (first.source_layer, first.target_layer) for t in transplants.values()):
            raise ValueError("the concepts' default transplants use different blocks; a lever compares them on one pair of blocks")
        sets = {concept: load_concept_set(concept) for concept in concepts}
        pairs = {concept: list(zip(concept_set.positives, concept_set.negatives)) for concept, concept_set in sets.items()}
        texts = sorted({text for concept_pairs in pairs.values() for pair in concept_pairs for text in pair})
        text_states = {}
        for role, spec, layer in (("source", source, first.source_layer), ("target", target, first.target_layer)):
            model, tokenizer = load_model(spec, argument=role, device=device)
            recorded = last_token_states(model, tokenizer, texts, [layer], progress=f"{role} states of the concept texts")[layer]
            free_model(model)
            text_states[role] = dict(zip(texts, recorded))
        anchor_texts, _ = load_anchor_texts(None)
        anchor_source, anchor_target, groups = paired_token_states(first, anchor_texts, device=device)
        own = {concept: target_own_vector(transplants[concept], sets[concept], anchor_texts, device=device) for concept in concepts}
        states = cls(transplants, pairs, text_states, anchor_source, anchor_target, groups, own, {})
        for concept, transplant in transplants.items():
            states.checks[concept] = {
                "source vector from the pairs": cosine(states.source_vector(pairs[concept]), transplant.source_vector),
                "own vector from the pairs": cosine(states.differences("target", pairs[concept]).mean(0), own[concept]),
            }
        return states

    def differences(self, role: str, pairs: Pairs) -> torch.Tensor:
        """(positive - negative) last-token states of `pairs` in the source or the target, float64."""
        return torch.stack([self.text_states[role][p].double() - self.text_states[role][n].double() for p, n in pairs])

    def source_vector(self, pairs: Pairs) -> torch.Tensor:
        return self.differences("source", pairs).mean(0)

    def shuffled_pairs(self, concept: str, seed: int = 0) -> Pairs:
        """The shuffled-label control's pairs (`controls.shuffled_labels`)."""
        from lm_eval_contrans.concepts import load_concept_set
        from lm_eval_contrans.experiments.controls import shuffled_labels

        control = shuffled_labels(load_concept_set(concept), seed)
        return list(zip(control.positives, control.negatives))


def choose(cosines: dict[str, dict[str, float]]) -> str:
    """The setting whose cosines to the target's own vectors are best on average over SELECTION."""
    return max(cosines, key=lambda setting: sum(cosines[setting][concept] for concept in SELECTION))


# a lever at its chosen setting: (emotion, source vector) -> target direction
Carry = Callable[[str, torch.Tensor], torch.Tensor]


def row_name(name: str, alpha: float) -> str:
    """A steering row's name; alpha 1 (the default) adds nothing, so that rows run before stay reusable."""
    return name if alpha == 1.0 else f"{name}|α={alpha:g}"


def steering_rows(states: LeverStates, target: str, levers: dict[str, Carry], alphas: tuple[float, ...] = (1.0,)) -> list[GridRow]:
    """Base; per emotion and alpha the default transplant and the random vector (alpha is in residual
    units, so one random direction serves every map), and per lever the transplanted vector (with the
    facts) and the shuffled-label control carried by the same lever."""
    from lm_eval_contrans.experiments.controls import random_control

    rows = [base_row(target, EMOTIONS)]
    for emotion in EMOTIONS:
        task, transplant = emotion_task(emotion), states.transplants[emotion]
        carried = {(lever, kind): dataclasses.replace(transplant.direction, vector=carry(emotion, states.source_vector(pairs)).float(),
                                                      origin={"map": lever, "pairs": kind})
                   for lever, carry in levers.items()
                   for kind, pairs in (("transplanted", states.pairs[emotion]), ("shuffled", states.shuffled_pairs(emotion)))}
        for alpha in alphas:
            rows += [GridRow(row_name(f"default|{emotion}|transplanted", alpha), "contrans", target, transplant, alpha, tasks=(task, FACTS)),
                     GridRow(row_name(f"{emotion}|random", alpha), "random", target, random_control(transplant, seed=0), alpha, tasks=(task,))]
            rows += [GridRow(row_name(f"{lever}|{emotion}|{kind}", alpha), "contrans" if kind == "transplanted" else "shuffled", target,
                             lever_transplant, alpha, tasks=(task, FACTS) if kind == "transplanted" else (task,))
                     for (lever, kind), lever_transplant in carried.items()]
    return rows


def steering_table(scores: dict, levers: list[str], limit: int, alpha: float = 1.0) -> str:
    """Steering success per emotion: default map, random, and each lever with its shuffled-label control and facts."""
    def cell_of(name: str, task: str) -> str:
        return cell(scores, row_name(name, alpha), task)

    def facts(name: str) -> str:
        return f"{scores[row_name(name, alpha)][FACTS]['acc,none']:.3f}"

    lines = [f"Steering success at α = {alpha:g} ({limit} dev scenarios per emotion; base facts {scores['base'][FACTS]['acc,none']:.3f}; "
             "one random direction for every map):", "",
             "| emotion | base | default map | random | " + " | ".join(f"{lever}: transplanted | shuffled labels | facts" for lever in levers)
             + " |", "|---|---|---|---|" + "---|---|---|" * len(levers)]
    for emotion in EMOTIONS:
        task = emotion_task(emotion)
        cells = [f"{cell_of(f'{lever}|{emotion}|transplanted', task)} | {cell_of(f'{lever}|{emotion}|shuffled', task)} | "
                 f"{facts(f'{lever}|{emotion}|transplanted')}" for lever in levers]
        lines.append(f"| {emotion} | {cell(scores, 'base', task)} | {cell_of(f'default|{emotion}|transplanted', task)} | "
                     f"{cell_of(f'{emotion}|random', task)} | " + " | ".join(cells) + " |")
    reached = {name: steered(scores, {e: row_name(f"{name}|{e}|transplanted", alpha) for e in EMOTIONS}) for name in ("default", *levers)}
    lines.append(f"| **≥ 0.8** | | **{reached['default']} of 6** | | " + " | ".join(f"**{reached[lever]} of 6** | | " for lever in levers) + " |")
    return "\n".join(lines)
