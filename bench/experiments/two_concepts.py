"""Two concepts at once on the packaged pair: does each keep its effect when combined?

Transplants sentiment and toxicity (non-toxicity) from SmolLM2-135M-Instruct into Gemma-3-270M
and evaluates contrans_sentiment and contrans_toxicity with: no steering, each concept alone,
and both together (`concept=sentiment+toxicity`). Prints a Markdown table (for docs/RESULTS.md).

Run: python bench/experiments/two_concepts.py [--limit 60] [--alphas 1 1] [--data ../shared/data]
"""

from __future__ import annotations

import argparse

from experiment_data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata, write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--alphas", type=float, nargs=2, default=[1.0, 1.0], metavar=("SENTIMENT", "TOXICITY"))
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplants

    transplants = build_transplants(SOURCE, TARGET, ["sentiment", "toxicity"], device="cpu", recipe=args.recipe)
    a, b = args.alphas
    print(f"machine: {machine()}; limit {args.limit}; held-out R^2 " +
          ", ".join(f"{t.concept} {t.heldout_r2:.3f}" for t in transplants), flush=True)
    grid = Grid(cache_root() / "experiments" / "two_concepts",
                EvalSettings(tasks=["contrans_sentiment", "contrans_toxicity"], limit=args.limit, batch_size=8,
                             device="cpu", task_metadata=task_metadata(data_folder(args.data))))
    rows = grid.run(GridRow(name, "contrans", TARGET, transplants, tuple(alphas)) for name, alphas in [
        ("none", (0.0, 0.0)), (f"sentiment α={a:g}", (a, 0.0)), (f"toxicity α={b:g}", (0.0, b)),
        (f"sentiment α={a:g} + toxicity α={b:g}", (a, b))])
    document = {"limit": args.limit, "recipe": args.recipe, "rows": [row.to_json() for row in rows]}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    from lm_eval_contrans.experiments.report import Row

    lines = ["| steering | sentiment acc_norm | sentiment margin | toxicity acc_norm | toxicity margin |", "|---|---|---|---|---|"]
    for row in map(lambda saved: Row(**saved), document["rows"]):
        cells = [f"{row.value(task, metric):.3f} ± {row.value(task, metric + '_stderr'):.3f}"
                 for task in ("contrans_sentiment", "contrans_toxicity") for metric in ("acc_norm", "margin")]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
