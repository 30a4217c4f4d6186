"""Two concepts at once on the packaged pair: does each keep its effect when combined?

Transplants sentiment and toxicity (non-toxicity) from SmolLM2-135M-Instruct into Gemma-3-270M
and evaluates contrans_sentiment and contrans_toxicity with: no steering, each concept alone,
and both together (`concept=sentiment+toxicity`). Prints a Markdown table (for docs/RESULTS.md).

Run: python bench/bench_two_concepts.py [--limit 60] [--alphas 1 1] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from _common import SHARED, SOURCE, TARGET, machine, shared_task_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--alphas", type=float, nargs=2, default=[1.0, 1.0], metavar=("SENTIMENT", "TOXICITY"))
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.build import build_transplant
    from lm_eval_contrans.lm_eval_model import ConTransLM

    transplants = [build_transplant(SOURCE, TARGET, concept, device="cpu", recipe=args.recipe) for concept in ("sentiment", "toxicity")]
    path = os.path.join(tempfile.mkdtemp(), "two.safetensors")
    save_transplants(transplants, path)
    lm = ConTransLM(target=TARGET, vector=path, alpha=0.0, device="cpu", batch_size=8)
    manager = TaskManager(metadata=shared_task_metadata(args.shared))
    a, b = args.alphas
    print(f"machine: {machine()}; limit {args.limit}; held-out R^2 " +
          ", ".join(f"{t.concept} {t.heldout_r2:.3f}" for t in transplants), flush=True)
    print("\n| steering | sentiment acc_norm | sentiment margin | toxicity acc_norm | toxicity margin |\n|---|---|---|---|---|")
    for name, alphas in [("none", [0.0, 0.0]), (f"sentiment α={a:g}", [a, 0.0]), (f"toxicity α={b:g}", [0.0, b]),
                         (f"sentiment α={a:g} + toxicity α={b:g}", [a, b])]:
        lm.alphas = alphas
        results = lm_eval.simple_evaluate(model=lm, tasks=["contrans_sentiment", "contrans_toxicity"], task_manager=manager,
                                          limit=args.limit, log_samples=False)["results"]
        cells = [f"{results[task][f'{metric},none']:.3f} ± {results[task][f'{metric}_stderr,none']:.3f}"
                 for task in ("contrans_sentiment", "contrans_toxicity") for metric in ("acc_norm", "margin")]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
