"""An alpha that transplants the effect size (issue 21, lever 3), measured before it becomes an option.

The concept separates the source's states along its direction v by d = |v| / s_source standard
deviations, where s_source is the spread of the source's anchor states projected on v (|v| is the
mean pair difference along v). The effect-size steer adds the transplanted direction u = v·W with the
norm d · s_target, s_target being the spread of the target's anchor states projected on u: the target
then moves along u by as many of its own standard deviations as the pairs differ in the source.

Two spreads: the plain standard deviation, and a robust one (1.4826 × the median absolute deviation),
since a few tokens per text (the first one above all) carry activations hundreds of times the others.
For each emotion: d, the two effect-size norms in residual alpha units (alpha = 1 adds 0.1 × the target
block's median residual norm), and on the dev data the steering success and the facts with the
transplanted vector and a random vector of the same norm at alpha = 1 and at each effect-size alpha.

Run:  python bench/experiments/effect_size_alpha.py --data ../shared/data --json bench/results/effect_size_alpha.json [--limit 40]
"""

from __future__ import annotations

import argparse
import time

from lm_eval_contrans.experiments.data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata, write_json,
)

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
SPREADS = ("std", "robust")


def spreads(values) -> dict[str, float]:
    """Plain and robust (1.4826 x median absolute deviation) standard deviation of a 1-d tensor."""
    values = values.double()
    return {"std": float(values.std()), "robust": float(1.4826 * (values - values.median()).abs().median())}


def effect_size(transplant) -> dict:
    """d in each spread, and the effect-size norm of the transplanted direction, as a residual alpha."""
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.pipeline.states import StateRequest, record_concept_states
    from lm_eval_contrans.steering import ALPHA_UNIT_FRACTION

    texts, _ = load_anchor_texts(None)
    any_concept = load_concept_set("sentiment")  # the request reads the cached anchor states; its concept is not used
    source, target = (record_concept_states(model, [StateRequest(any_concept, layer)], anchor_texts=texts, anchor_tokens="dense",
                                            device="cpu", role=role)[0].anchor_states[layer]
                      for model, layer, role in ((SOURCE, transplant.source_layer, "source"), (TARGET, transplant.target_layer, "target")))
    v, u = transplant.source_vector.double(), transplant.vector.double()
    source_spread, target_spread = spreads(source.double() @ (v / v.norm())), spreads(target.double() @ (u / u.norm()))
    unit = ALPHA_UNIT_FRACTION * transplant.residual_norm
    return {kind: {"d": float(v.norm()) / source_spread[kind], "alpha": float(v.norm()) / source_spread[kind] * target_spread[kind] / unit}
            for kind in SPREADS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, default=40, help="scenarios per emotion task (make_results.py uses 40)")
    parser.add_argument("--emotions", nargs="+", default=EMOTIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.controls import random_control
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant

    started = time.time()
    shared = data_folder(args.data)
    print(f"machine: {machine()}; {args.limit} scenarios per emotion task", flush=True)
    rows = [GridRow("base", "base", TARGET, alpha=0.0, tasks=tuple(f"contrans_emotion_{e}" for e in args.emotions) + ("contrans_facts",))]
    effects = {}
    for emotion in args.emotions:
        transplant = build_transplant(SOURCE, TARGET, emotion, device="cpu")
        effects[emotion] = effect_size(transplant)
        print(f"[{time.time() - started:6.0f} s] {emotion}: " + ", ".join(
            f"{kind} d {e['d']:.2f} alpha {e['alpha']:.2f}" for kind, e in effects[emotion].items()), flush=True)
        task = f"contrans_emotion_{emotion}"
        for setting, alpha in (("α 1", 1.0), *((f"effect size ({kind})", effects[emotion][kind]["alpha"]) for kind in SPREADS)):
            rows += [GridRow(f"{setting}|{emotion}|transplanted", "contrans", TARGET, transplant, alpha, tasks=(task, "contrans_facts")),
                     GridRow(f"{setting}|{emotion}|random", "random", TARGET, random_control(transplant, seed=0), alpha, tasks=(task,))]
    settings = EvalSettings(tasks=[], limit={**{f"contrans_emotion_{e}": args.limit for e in EMOTIONS}, "contrans_facts": None},
                            batch_size=args.batch_size, device="cpu", bootstrap_iters=0, task_metadata=task_metadata(shared))
    scores = {row.name: {task: {metric: value for metric, value in results.items() if metric.startswith("acc")}
                         for task, results in row.results.items()}
              for row in Grid(cache_root() / "experiments" / "effect_size_alpha", settings).run(rows)}
    document = {"limit": args.limit, "emotions": args.emotions, "effects": effects, "scores": scores, "seconds": time.time() - started}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    scores, effects = document["scores"], document["effects"]

    def acc(row: str, task: str) -> str:
        value = scores[row][task]
        stderr = value.get("acc_stderr,none")
        return f"{value['acc,none']:.2f}" + (f" ± {stderr:.2f}" if isinstance(stderr, float) else "")

    lines = [f"Steering success ({document['limit']} dev scenarios per emotion; base facts "
             f"{scores['base']['contrans_facts']['acc,none']:.3f}); d = source pair separation in source standard deviations; "
             "α = the effect-size norm in residual units.", "",
             "| emotion | d (std) | α (std) | d (robust) | α (robust) | base | " +
             " | ".join(f"{s} transplanted | {s} random | {s} facts" for s in ("α 1", "effect size (std)", "effect size (robust)")) + " |",
             "|---|---|---|---|---|---|" + "---|" * 9]
    for emotion in document["emotions"]:
        task, effect = f"contrans_emotion_{emotion}", effects[emotion]
        cells = [f"{acc(f'{s}|{emotion}|transplanted', task)} | {acc(f'{s}|{emotion}|random', task)} | "
                 f"{scores[f'{s}|{emotion}|transplanted']['contrans_facts']['acc,none']:.3f}"
                 for s in ("α 1", "effect size (std)", "effect size (robust)")]
        lines.append(f"| {emotion} | {effect['std']['d']:.2f} | {effect['std']['alpha']:.2f} | {effect['robust']['d']:.2f} | "
                     f"{effect['robust']['alpha']:.2f} | {acc('base', task)} | " + " | ".join(cells) + " |")
    reached = {s: sum(scores[f"{s}|{e}|transplanted"][f"contrans_emotion_{e}"]["acc,none"] >= 0.8 for e in document["emotions"])
               for s in ("α 1", "effect size (std)", "effect size (robust)")}
    lines.append("| **≥ 0.8** | | | | | | " + " | ".join(f"**{reached[s]} of {len(document['emotions'])}** | |" for s in reached) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
