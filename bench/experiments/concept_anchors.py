"""Concept-aware anchors (issue 21, lever 1): fit the map on anchors that include text from the
concepts' own register, not only neutral prose.

Anchor corpora, the default recipe otherwise (dense tokens, centred least squares, source block by
held-out R^2, target block 0.75, alpha in residual units):
- `shipped`: the shipped neutral corpus (today's default);
- `+ every set`: the shipped corpus and every text of every shipped concept set, both sides (the
  emotion's own scenarios among them);
- `+ other sets`: the shipped corpus and the texts of the sets that share no text with the concept
  (for an emotion: sentiment, honesty and toxicity, since the six emotion sets share their scenarios;
  for another concept: every set but its own), so a gain cannot come from fitting the very texts the
  concept vector is read from.

For each corpus and concept: the cosine between the transplanted vector and the target's own vector
of the concept (read from the same pairs at the same block); the map's R^2 on texts none of the
corpora hold, neutral (WikiSplit sentences) and concept-register (the dev emotion scenarios in the
emotion prompt), each centred on its own means (the map carries differences of states, which is
what a concept vector is); and on the dev data at the default alpha (1), the emotion's steering success
with the transplanted vector, a random vector of the same norm and the shuffled-label control (the
same pairs with sides swapped on a seeded coin, through the same map), and the facts under the
transplanted vector.

Run:  python bench/experiments/concept_anchors.py --data ../shared/data --json bench/results/concept_anchors.json
      [--limit 40] [--concepts happiness ...]   (about 40 min on 2 cores with an empty state cache)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import emotion_steering as emotions
from experiment_data import SOURCE, TARGET, data_folder, machine, write_json
from emotion_steering import EMOTIONS, FACTS, emotion_task

SHIPPED = ["sentiment", "honesty", "toxicity", *EMOTIONS]
CORPORA = ["shipped", "+ every set", "+ other sets"]
EMOTION_PROMPT = "Scenario: {}\nThe emotion of the above scenario is"


def sets_sharing_no_text(concept: str) -> list[str]:
    family = EMOTIONS if concept in EMOTIONS else [concept]
    return [name for name in SHIPPED if name not in family]


def anchor_file(folder: Path, concepts: list[str]) -> Path:
    """The shipped corpus followed by every distinct text of `concepts`' sets (JSONL: the emotion texts span lines)."""
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set

    texts, _ = load_anchor_texts(None)
    seen = set(texts)
    for name in concepts:
        concept = load_concept_set(name)
        for text in (*concept.positives, *concept.negatives):
            if text not in seen:
                seen.add(text)
                texts.append(text)
    path = folder / ("anchors+" + "+".join(concepts) + ".jsonl" if len(concepts) < len(SHIPPED) else "anchors+every-set.jsonl")
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    return path


def evaluation_texts(shared: Path, count: int = 300, seed: int = 7) -> dict[str, list[str]]:
    """Texts no corpus holds: WikiSplit sentences (neutral) and the dev emotion scenarios (concept register)."""
    wiki = [line.strip() for line in (shared / "anchors" / "wiki_split.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    scenarios = json.loads((shared / "emotions" / "scenarios_dev.json").read_text(encoding="utf-8"))
    return {"neutral": random.Random(seed).sample(wiki, count),
            "emotion scenarios": [EMOTION_PROMPT.format(text) for emotion in EMOTIONS for text in scenarios[emotion][:count // len(EMOTIONS)]]}


def map_r2(transplant, texts: list[str]) -> float:
    """R^2 of the transplant's map on `texts` (dense token pairs), each side centred on these texts' means."""
    from lm_eval_contrans.reformulate import r_squared
    from states import paired_token_states

    source, target, _ = paired_token_states(transplant, texts)
    predicted = (source.double() - source.double().mean(0)) @ transplant.map_weight.double()
    return r_squared(predicted, target.double() - target.double().mean(0))


def main() -> None:
    args = emotions.parse_arguments(__doc__, render, emotions=False,
                                      more=lambda parser: parser.add_argument("--concepts", nargs="+", default=EMOTIONS,
                                                                              help="concepts whose cosines are measured"))
    if args is None:
        return

    import torch

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, random_control, shuffled_labels, target_own_vector
    from lm_eval_contrans.experiments.grid import Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant

    watch = emotions.Stopwatch()
    torch.manual_seed(0)
    shared = data_folder(args.data)
    work = cache_root() / "experiments" / "concept_anchors"
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; {args.limit} scenarios per emotion task", flush=True)
    held_out = evaluation_texts(shared)
    every_set = anchor_file(work, SHIPPED)
    corpus_of = {("shipped", c): None for c in args.concepts} | {("+ every set", c): every_set for c in args.concepts} | {
        ("+ other sets", c): anchor_file(work, sets_sharing_no_text(c)) for c in args.concepts}

    fits, rows = {}, [emotions.base_row(TARGET, [e for e in EMOTIONS if e in args.concepts])]
    for (corpus, concept), anchors in corpus_of.items():
        transplant = build_transplant(SOURCE, TARGET, concept, device="cpu", anchors=anchors)
        anchor_texts, _ = load_anchor_texts(anchors)
        own = target_own_vector(transplant, load_concept_set(concept), anchor_texts, device="cpu")
        fit = {"source_layer": transplant.source_layer, "anchor_texts": len(anchor_texts), "heldout_r2": transplant.heldout_r2,
               "cos_to_own": cosine(transplant.vector, own)}
        fit.update({f"r2 {kind}": map_r2(transplant, texts) for kind, texts in held_out.items()})
        fits[f"{corpus}|{concept}"] = fit
        watch.log(f"{corpus:13s} {concept:9s} " + ", ".join(f"{k} {v:.3f}" for k, v in fit.items()))
        if concept in EMOTIONS:
            shuffled = build_transplant(SOURCE, TARGET, shuffled_labels(load_concept_set(concept)), device="cpu", anchors=anchors)
            task = emotion_task(concept)
            rows += [GridRow(f"{corpus}|{concept}|transplanted", "contrans", TARGET, transplant, 1.0, tasks=(task, FACTS)),
                     GridRow(f"{corpus}|{concept}|random", "random", TARGET, random_control(transplant, seed=0), 1.0, tasks=(task,)),
                     GridRow(f"{corpus}|{concept}|shuffled", "shuffled", TARGET, shuffled, 1.0, tasks=(task,))]
    scores = emotions.accuracies(Grid(work / "grid", emotions.settings(shared, args.limit, args.batch_size)).run(rows))
    document = {"limit": args.limit, "concepts": args.concepts, "corpora": CORPORA, "held_out_texts": {k: len(v) for k, v in held_out.items()},
                "fits": fits, "scores": scores, "seconds": watch.seconds}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """Two tables: the maps (cosines, R^2 on neutral and concept text) and the steering at alpha 1."""
    fits, scores = document["fits"], document["scores"]
    lines = ["| corpus | texts | source block | held-out R² (its own split) | R² neutral | R² emotion scenarios | cos to own, " +
             " / ".join(document["concepts"]) + " | mean cos |", "|---|---|---|---|---|---|---|---|"]
    for corpus in document["corpora"]:
        cells = [fits[f"{corpus}|{c}"] for c in document["concepts"]]
        cosines = [cell["cos_to_own"] for cell in cells]

        def values(key: str, form: str = "{:.3f}") -> str:  # one value, or the distinct values across concepts
            return " / ".join(dict.fromkeys(form.format(cell[key]) for cell in cells))

        lines.append(f"| {corpus} | {values('anchor_texts', '{:,}')} | {values('source_layer', '{}')} | {values('heldout_r2')} | "
                     f"{values('r2 neutral')} | {values('r2 emotion scenarios')} | "
                     + " / ".join(f"{value:.2f}" for value in cosines) + f" | {sum(cosines) / len(cosines):.3f} |")
    steered_emotions = [c for c in document["concepts"] if c in EMOTIONS]
    if not steered_emotions:
        return "\n".join(lines)
    base_facts = scores["base"][FACTS]["acc,none"]
    lines += ["", f"Steering success at α = 1 ({document['limit']} dev scenarios per emotion; base facts {base_facts:.3f}):", "",
              "| corpus | emotion | base | transplanted | random | shuffled labels | facts (transplanted) |", "|---|---|---|---|---|---|---|"]
    for corpus in document["corpora"]:
        for emotion in steered_emotions:
            task, name = emotion_task(emotion), f"{corpus}|{emotion}"
            lines.append(f"| {corpus} | {emotion} | " + " | ".join(emotions.cell(scores, row, task) for row in
                                                                   ("base", f"{name}|transplanted", f"{name}|random", f"{name}|shuffled"))
                         + f" | {scores[name + '|transplanted'][FACTS]['acc,none']:.3f} |")
        reached = emotions.steered(scores, {e: f"{corpus}|{e}|transplanted" for e in steered_emotions})
        lines.append(f"| {corpus} | **≥ 0.8** | | **{reached} of {len(steered_emotions)}** | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
