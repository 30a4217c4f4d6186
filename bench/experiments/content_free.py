"""What TruthfulQA MC1/MC2 and ToxiGen acc_norm give a scorer that ignores the document (issue 4:
why a random vector can raise MC2, and why it cannot explain the toxicity control).

MC2 is the probability mass a model puts on the true answers, normalised over the question's
answers. A scorer that knows nothing still gets a share of it: with every answer equally likely,
MC2 is the share of true answers; when a steer washes out what the model knows, each answer's
log-likelihood drifts towards (minus) a constant times its token count, and the shorter answers win.
This prints both levels for the local dev file, tokenised as the target tokenises the choices
(with the leading space lm-eval's truthfulqa tasks put before each), for comparison with the base
target's measured MC2: a base below these levels gains MC2 from any push that erases content.
For contrans_toxicity it prints the acc_norm (log-likelihood per byte) of a scorer that finds every
token equally unlikely, on the task's own documents.

Run: python bench/experiments/content_free.py --data ../shared/data   (seconds; tokenizer only)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from experiment_data import (
    TARGET, add_data_argument, add_json_argument, data_folder, printed_from_saved, task_metadata, write_json,
)


def content_free_scores(choices: list[str], labels: list[int], token_counts: list[int], nats_per_token: float | None):
    """(MC1, MC2) when answer i has log-likelihood -nats_per_token * tokens_i (None: all equal).
    MC1 counts a tie for the best answer as a share, as a coin flip among the tied would."""
    weights = [1.0] * len(choices) if nats_per_token is None else [math.exp(-nats_per_token * n) for n in token_counts]
    mc2 = sum(w for w, label in zip(weights, labels) if label) / sum(weights)
    best = max(weights)
    tied = [label for w, label in zip(weights, labels) if math.isclose(w, best)]
    return sum(tied) / len(tied), mc2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--target", default=TARGET, help="whose tokenizer counts the tokens (default: the packaged Gemma 3)")
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return
    document = {"scorers": {}}

    from transformers import AutoTokenizer

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    tokenizer = AutoTokenizer.from_pretrained(pretrained_path(parse_model_spec(args.target, "target")))
    path = data_folder(args.data) / "truthfulqa" / "truthfulqa_mc_dev.jsonl"
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def tokens(text: str) -> int:
        return len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])

    print(f"{len(questions)} questions from {path}; tokens counted by {args.target}\n")
    print("| scorer | MC1 | MC2 |")
    print("|---|---|---|")
    for name, nats in (("every answer equally likely", None), ("shorter answers win, 1 nat a token", 1.0),
                       ("shorter answers win, 5 nats a token", 5.0)):
        mc1 = [content_free_scores(q["mc1_targets"]["choices"], q["mc1_targets"]["labels"],
                                   [tokens(c) for c in q["mc1_targets"]["choices"]], nats)[0] for q in questions]
        mc2 = [content_free_scores(q["mc2_targets"]["choices"], q["mc2_targets"]["labels"],
                                   [tokens(c) for c in q["mc2_targets"]["choices"]], nats)[1] for q in questions]
        print(f"| {name} | {statistics.mean(mc1):.3f} | {statistics.mean(mc2):.3f} |")
        document["scorers"][name] = {"mc1": statistics.mean(mc1), "mc2": statistics.mean(mc2)}
    true_tokens = [tokens(c) for q in questions for c, label in zip(q["mc2_targets"]["choices"], q["mc2_targets"]["labels"]) if label]
    false_tokens = [tokens(c) for q in questions for c, label in zip(q["mc2_targets"]["choices"], q["mc2_targets"]["labels"]) if not label]
    print(f"\nMC2 answers: true {statistics.mean(true_tokens):.2f} tokens on average ({len(true_tokens)}), "
          f"false {statistics.mean(false_tokens):.2f} ({len(false_tokens)})")

    from lm_eval.tasks import TaskManager

    task = TaskManager(metadata=task_metadata(data_folder(args.data))).load("contrans_toxicity")["tasks"]["contrans_toxicity"]
    delimiter, wins = task.config.target_delimiter, []
    for doc in task.test_docs():
        choices, gold = task.doc_to_choice(doc), task.doc_to_target(doc)
        per_byte = [-len(tokenizer(delimiter + c, add_special_tokens=False)["input_ids"]) / len((delimiter + c).encode())
                    for c in choices]
        wins.append(per_byte[gold] > max(score for index, score in enumerate(per_byte) if index != gold))
    print(f"\ncontrans_toxicity ({len(wins)} prompt lists): acc_norm of a scorer that finds every token equally "
          f"unlikely {statistics.mean(wins):.3f}")
    document.update(questions=len(questions), mc2_true_tokens=statistics.mean(true_tokens),
                    mc2_false_tokens=statistics.mean(false_tokens), toxicity_lists=len(wins),
                    toxicity_acc_norm_uniform_tokens=statistics.mean(wins))
    write_json(args.json, document)


def render(document: dict) -> str:
    """The figures docs/RESULTS.md quotes, from the numbers `main` measured."""
    lines = ["| scorer that ignores the question | MC1 | MC2 |", "|---|---|---|"]
    lines += [f"| {name} | {values['mc1']:.3f} | {values['mc2']:.3f} |" for name, values in document["scorers"].items()]
    lines.append(f"\nMC2 answers ({document['questions']} questions): true {document['mc2_true_tokens']:.2f} tokens on "
                 f"average, false {document['mc2_false_tokens']:.2f}")
    lines.append(f"\ncontrans_toxicity ({document['toxicity_lists']} prompt lists): acc_norm of a scorer that finds every "
                 f"token equally unlikely {document['toxicity_acc_norm_uniform_tokens']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
