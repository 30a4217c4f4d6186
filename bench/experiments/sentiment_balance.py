"""Where does a base target sit on contrans_sentiment-style prompts, frame by frame? (issue 3)

The task asks for neutral review openings on which the base model sits near 50 %, so that a steer
can move it either way. This prints, for the base target, the share of prompts on which it prefers
the positive verdict (raw and per-byte log-likelihood, as lm-eval's acc / acc_norm) and the mean
margin, for the shipped frame and for alternatives: other verdict words, openings that give one
point for and one against (or only the point against), a question that names both answers (in
both orders), other verdict forms (recommend yes/no, star ratings, thumbs up/down, satisfied), and
openings balanced as a set (half give a point for, half a point against).

Run: python bench/experiments/sentiment_balance.py [--target packaged:gemma-3-270m] [--frames TEXT] [--json FILE [--render]]
"""

from __future__ import annotations

import argparse
import json
import re

from experiment_data import TARGET, add_json_argument, machine, printed_from_saved, write_json
from lm_eval_contrans.tasks_path import shipped_dir


def shipped_prompts() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(subject, details) and (positive, negative) verdict of each contrans_sentiment prompt, read back from
    the shipped task's data (scripts/make_sentiment_prompts.py writes it from its SUBJECTS and VERDICTS)."""
    subjects, verdicts = [], []
    path = shipped_dir("tasks") / "contrans_sentiment" / "sentiment_prompts.jsonl"
    for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
        subject, details = re.fullmatch(r"Review of (.+?): (.+) Overall, my experience was", row["prompt"]).groups()
        subjects.append((subject, details))
        verdicts.append((row["positive"], row["negative"]))
    return subjects, verdicts


# the shipped frame's verdicts, one pair per prompt (the script cycles through five)
SUBJECTS, VERDICTS = shipped_prompts()

# one point for and one against, in SUBJECTS order (written for this benchmark)
FOR_AND_AGAINST = [
    ("The bed was comfortable", "the walls were thin"),
    ("They kept my feet dry", "they rubbed at the heel"),
    ("The pasta was freshly made", "we waited forty minutes for it"),
    ("The plot moves quickly", "the ending felt rushed"),
    ("The keys are quiet", "it loses its connection now and then"),
    ("The guide knew a lot of history", "the group was too large to hear her"),
    ("The battery lasts a long time", "it is heavy to hold overhead"),
    ("The teachers were patient", "the rooms were cold in the mornings"),
    ("The bread had a good crust", "the coffee was lukewarm"),
    ("The trains are clean", "they are often a few minutes late"),
    ("The research is thorough", "the sound quality varies"),
    ("It fits the phone well", "the colour faded after a few weeks"),
    ("The dentist was gentle", "the appointment started half an hour late"),
    ("The drummer was superb", "the sound in the hall was muddy"),
    ("The videos are clear", "the quizzes repeat the same questions"),
    ("The car was almost new", "the pick-up queue took an hour"),
    ("The grind is even", "it is loud in the morning"),
    ("The children laughed a lot", "some scenes were hard to follow"),
    ("It stayed dry in the rain", "the zips kept sticking"),
    ("The equipment is modern", "the changing rooms are crowded"),
    ("The fossils were impressive", "half the labels were missing"),
    ("It boils quickly", "the lid is stiff to open"),
    ("The cut was neat", "it cost more than I was quoted"),
    ("The chef explained each step", "there were not enough knives to go round"),
    ("The bass is rich", "the ear pads get warm after an hour"),
    ("The views were lovely", "the cafe on board was closed"),
    ("Transfers are instant", "the app logs me out often"),
    ("The plants looked healthy", "there was nobody to ask for advice"),
    ("The filming is beautiful", "the narration is slow"),
    ("The driver was polite", "two items were missing from the order"),
    ("The beach was clean", "the room smelled of damp"),
    ("The rules are simple", "the box is missing two pieces"),
    ("He fixed the leak quickly", "he left a mess under the sink"),
    ("The straps are comfortable", "the fabric marks easily"),
    ("The headline acts were strong", "the queues for water were long"),
    ("The recipes are easy to follow", "a few ingredients are hard to find"),
    ("The seats were comfortable", "the food ran out early"),
    ("It cleans the floors well", "it gets stuck under the sofa"),
    ("The teacher was encouraging", "the kilns were running late"),
    ("The maps are accurate", "some trail descriptions are out of date"),
    ("The fish was fresh", "the rice was dry"),
    ("The step count is accurate", "the strap irritated my wrist"),
    ("The breakfast was generous", "the shower ran cold"),
    ("The animation is charming", "the songs are forgettable"),
    ("The mechanic explained the problem", "the car was ready a day late"),
    ("The staff are helpful", "the study room is noisy"),
    ("The gears shift smoothly", "the saddle is hard"),
    ("It is very warm", "the sleeves are too short"),
    ("The speakers were knowledgeable", "the hall was too warm"),
    ("The produce is fresh", "prices are higher than in the shops"),
]
PLAIN_WORDS = [(" good", " bad"), (" positive", " negative"), (" pleasant", " unpleasant"),
               (" satisfying", " frustrating"), (" fine", " poor")]


def capital(text: str) -> str:
    return text[0].upper() + text[1:]


def for_and_against(index: int) -> str:
    good, bad = FOR_AND_AGAINST[index]
    if index % 2 == 0:
        return f"{good}, but {bad}."
    return f"{capital(bad)}, but {good[0].lower() + good[1:]}."


def frames() -> dict[str, list[tuple[str, str, str]]]:
    """frame name -> [(context, positive continuation, negative continuation)] over the 50 subjects."""
    out: dict[str, list] = {}

    def add(name, opening, ending, words):
        out[name] = [(f"Review of {subject}: {opening(i, details)} {ending}".rstrip(), *words[i % len(words)])
                     for i, (subject, details) in enumerate(SUBJECTS)]

    factual = lambda i, details: details  # noqa: E731
    mixed = lambda i, details: f"{details} {for_and_against(i)}"  # noqa: E731
    add("shipped: factual opening, strong verdicts", factual, "Overall, my experience was", VERDICTS)
    add("factual opening, plain verdicts (good/bad, ...)", factual, "Overall, my experience was", PLAIN_WORDS)
    add("opening with a point for and one against, strong verdicts", mixed, "Overall, my experience was", VERDICTS)
    add("opening with a point for and one against, plain verdicts", mixed, "Overall, my experience was", PLAIN_WORDS)
    add("for and against, 'Was it good or bad? It was'", mixed, "Was it good or bad? It was", [(" good", " bad")])
    add("for and against, 'Was it bad or good? It was'", mixed, "Was it bad or good? It was", [(" good", " bad")])
    against_last = lambda i, details: f"{details} {FOR_AND_AGAINST[i][0]}, but {FOR_AND_AGAINST[i][1]}."  # noqa: E731
    against_only = lambda i, details: f"{details} {capital(FOR_AND_AGAINST[i][1])}."  # noqa: E731
    add("point for, then point against, strong verdicts", against_last, "Overall, my experience was", VERDICTS)
    add("point against only, strong verdicts", against_only, "Overall, my experience was", VERDICTS)
    add("point against only, plain verdicts", against_only, "Overall, my experience was", PLAIN_WORDS)
    add("factual opening, 'Would I recommend it?' Yes/No", factual, "Would I recommend it?", [(" Yes", " No")])
    add("point against only, 'Would I recommend it?' Yes/No", against_only, "Would I recommend it?", [(" Yes", " No")])
    add("factual opening, 'My rating:' 5 stars/1 star", factual, "My rating:", [(" 5 stars", " 1 star")])
    add("factual opening, 'My rating:' 4 stars/2 stars", factual, "My rating:", [(" 4 stars", " 2 stars")])
    add("factual opening, 'Verdict: thumbs' up/down", factual, "Verdict: thumbs", [(" up", " down")])
    add("factual opening, 'All in all, I was' satisfied/dissatisfied", factual, "All in all, I was",
        [(" satisfied", " dissatisfied")])
    # Openings balanced as a set rather than one by one: half the prompts give a point for, half a
    # point against, so a reader without a prior sits at 50 %.
    alternating = lambda i, details: f"{details} {capital(FOR_AND_AGAINST[i][i % 2])}."  # noqa: E731
    add("half the openings a point for, half a point against, strong verdicts", alternating,
        "Overall, my experience was", VERDICTS)
    add("half a point for, half against, then 'but overall' (leans the other way), strong verdicts",
        lambda i, details: f"{details} {capital(FOR_AND_AGAINST[i][i % 2])}, but overall my experience was",
        "", VERDICTS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", default="", help="only the frames whose name contains this text")
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return
    document = {"target": args.target, "frames": {}}
    assert len(FOR_AND_AGAINST) == len(SUBJECTS)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    lm = HFLM(pretrained=pretrained_path(parse_model_spec(args.target, "target")), device="cpu",
              batch_size=args.batch_size)
    print(f"machine: {machine()}; target {args.target}; {len(SUBJECTS)} prompts per frame")
    for name, rows in frames().items():
        if args.frames not in name:
            continue
        requests = [Instance("loglikelihood", {}, (context, continuation), index)
                    for index, (context, *choices) in enumerate(rows) for continuation in choices]
        scores = [result[0] for result in lm.loglikelihood(requests, disable_tqdm=True)]
        raw = normed = 0
        margins = []
        for index, (_, positive, negative) in enumerate(rows):
            good, bad = scores[2 * index], scores[2 * index + 1]
            raw += good > bad
            normed += good / len(positive.encode()) > bad / len(negative.encode())
            margins.append(good - bad)
        count = len(rows)
        document["frames"][name] = {"acc": raw / count, "acc_norm": normed / count, "margin": sum(margins) / count}
        print(f"{name}: {raw / count:.2f} / {normed / count:.2f} / {sum(margins) / count:+.2f}", flush=True)
    print("\n" + render(document))
    write_json(args.json, document)


def render(document: dict) -> str:
    """The table of frames, from a saved run."""
    return "\n".join(["| frame | prefers positive (acc) | per byte (acc_norm) | mean margin |", "|---|---|---|---|"]
                     + [f"| {name} | {row['acc']:.2f} | {row['acc_norm']:.2f} | {row['margin']:+.2f} |"
                        for name, row in document["frames"].items()])


if __name__ == "__main__":
    main()
