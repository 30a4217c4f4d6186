"""A steering vector made by another tool, ported: repeng's control vector for SmolLM2-135M-Instruct,
trained on our sentiment pairs and saved with repeng's own `export_gguf`, carried into Gemma-3-270M by
`contrans port` (issue 20), against the base target, a random vector of equal norm and our own ConTrans
sentiment transplant, on contrans_sentiment (all 50 prompts) and contrans_emotion_happiness (40 scenarios).

repeng 0.4.0 (PyPI) declares numpy<2; this project runs numpy 2. A bench-only `pip install --no-deps
repeng==0.4.0` runs once numpy's removed alias `np.float_` (used in one type annotation of repeng's
ControlVector) is pointed at `np.float64` before the import; nothing else in repeng needs numpy 1.
repeng trains at the source block our default build chooses for sentiment (by held-out R^2), and the
port lands at the same target block, so the two transplants differ only in how the source direction
was made: repeng's first principal component of the pair differences (unit norm), ours the mean
difference. Both are used in residual units, so at each alpha the three vectors have equal norms.

With --all-layers, repeng trains at its default layers instead (every block but the first: one direction
per block, as its users get it), the port maps each block to the target block of the same relative depth
(several source blocks share a target block), the blocks share alpha (`Transplant.alpha_share`), and the
facts are scored too.

Run: pip install --no-deps repeng==0.4.0
     python bench/experiments/port_repeng.py --data ../shared/data [--alphas 1 2] [--json FILE]
     python bench/experiments/port_repeng.py --data ../shared/data --all-layers --json bench/results/port_repeng_all_layers.json
     python bench/experiments/port_repeng.py --render --json bench/results/port_repeng.json   (the table, from the JSON)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from experiment_data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, task_metadata, write_json,
)

TASKS = {"contrans_sentiment": ("acc_norm", "margin"), "contrans_emotion_happiness": ("acc",)}
FACTS = {"contrans_facts": ("acc",)}  # scored with --all-layers: a vector at every block is a bigger intervention


def import_repeng():
    import numpy

    if not hasattr(numpy, "float_"):  # removed in numpy 2; repeng 0.4.0 names it in an annotation
        numpy.float_ = numpy.float64
    import repeng

    return repeng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--emotion-docs", type=int, default=40, help="happiness scenarios (make_results.py uses 40)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--all-layers", action="store_true", help="repeng's default layers instead of the build's block")
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return
    document = measure(args)
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """The docs/RESULTS.md table, from what `measure` wrote."""
    from lm_eval_contrans.experiments.report import Row

    tasks = {**TASKS, **FACTS} if "blocks" in document else TASKS
    header = [f"{task.removeprefix('contrans_')} {metric}" for task, metrics in tasks.items() for metric in metrics]
    lines = ["| row | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for saved in document["rows"]:
        row = Row(**saved)
        cells = [f"{row.value(task, metric):.3f} ± {row.value(task, metric + '_stderr'):.3f}"
                 for task, metrics in tasks.items() for metric in metrics]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    if "blocks" in document:  # --all-layers
        lines.append(f"\n{len(document['blocks'])} blocks (source → target, held-out R²): "
                     + ", ".join(f"{s}→{t} {r:.3f}" for s, t, r in document["blocks"])
                     + f"; each block's share of α {document['alpha_share']:.4g}")
        return "\n".join(lines)
    lines.append(f"\nsource block {document['source_block']} -> target block {document['target_block']}; held-out R^2 of "
                 f"the map {document['heldout_r2']:.3f}; cosine(ported repeng, ConTrans) {document['cosine_target']:.3f}; "
                 f"cosine at the source {document['cosine_source']:.3f}")
    return "\n".join(lines)


def trained_with_repeng(repeng, hidden_layers: list[int] | None, name: str) -> Path:
    """A control vector for the source trained by repeng on our sentiment pairs (its first principal component
    of the pair differences; `hidden_layers` None: repeng's default layers), written by repeng's own export_gguf."""
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.loading import free_model, load_model

    pairs = load_concept_set("sentiment")
    model, tokenizer = load_model(SOURCE, argument="source", device="cpu")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = [repeng.DatasetEntry(positive=p, negative=n) for p, n in zip(pairs.positives, pairs.negatives)]
    control_vector = repeng.ControlVector.train(model, tokenizer, dataset, hidden_layers=hidden_layers, method="pca_diff")
    free_model(model)
    exported = Path(tempfile.mkdtemp(prefix="contrans-repeng-")) / name
    control_vector.export_gguf(str(exported))
    return exported


def measure(args) -> dict:
    if args.all_layers:
        return measure_all_layers(args)
    repeng = import_repeng()
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.controls import cosine, random_control
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant, port_vector

    started = time.time()
    print(f"machine: {machine()}; repeng {getattr(repeng, '__version__', '0.4.0')}", flush=True)
    ours = build_transplant(SOURCE, TARGET, "sentiment", device="cpu")
    block = ours.source_layer
    exported = trained_with_repeng(repeng, [block], "sentiment_smollm2_repeng.gguf")
    print(f"[{time.time() - started:5.0f} s] repeng trained at block {block}, exported {exported.name}", flush=True)
    ported, = port_vector(SOURCE, TARGET, str(exported), target_layer=ours.target_layer, device="cpu")
    print(f"[{time.time() - started:5.0f} s] ported: blocks {ported.source_layer} -> {ported.target_layer}, "
          f"held-out R^2 {ported.heldout_r2:.3f}; cosine to ours {cosine(ported.vector, ours.vector):.3f}", flush=True)

    random = random_control(ours, seed=0)
    rows = [GridRow("base target", "base", TARGET, alpha=0.0)]
    for alpha in args.alphas:
        rows += [GridRow(f"ConTrans sentiment α={alpha:g}", "contrans", TARGET, ours, alpha),
                 GridRow(f"repeng vector, ported α={alpha:g}", "contrans", TARGET, ported, alpha),
                 GridRow(f"random vector α={alpha:g}", "random", TARGET, random, alpha)]
    grid = Grid(cache_root() / "experiments" / "port_repeng",
                EvalSettings(tasks=sorted(TASKS), limit={"contrans_sentiment": None, "contrans_emotion_happiness": args.emotion_docs},
                             batch_size=args.batch_size, device="cpu",
                             task_metadata=task_metadata(data_folder(args.data))))
    measured = grid.run(rows)
    print(f"{time.time() - started:.0f} s", flush=True)
    return {"source_block": block, "target_block": ours.target_layer, "heldout_r2": ported.heldout_r2,
            "cosine_target": cosine(ported.vector, ours.vector),
            "cosine_source": cosine(ported.source_vector, ours.source_vector),
            "imported": ported.extra["imported"], "seconds": time.time() - started,
            "rows": [row.to_json() for row in measured]}


def measure_all_layers(args) -> dict:
    repeng = import_repeng()
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant, port_vector

    started = time.time()
    print(f"machine: {machine()}; repeng {getattr(repeng, '__version__', '0.4.0')}", flush=True)
    ours = build_transplant(SOURCE, TARGET, "sentiment", device="cpu")
    exported = trained_with_repeng(repeng, None, "sentiment_smollm2_repeng_all_layers.gguf")  # its default layers
    print(f"[{time.time() - started:5.0f} s] repeng trained at its default layers, exported {exported.name}", flush=True)
    ported = port_vector(SOURCE, TARGET, str(exported), device="cpu")
    print(f"[{time.time() - started:5.0f} s] ported {len(ported)} blocks", flush=True)
    rows = [GridRow("base target", "base", TARGET, alpha=0.0)]
    for alpha in args.alphas:
        rows += [GridRow(f"ConTrans sentiment (one block) α={alpha:g}", "contrans", TARGET, ours, alpha),
                 GridRow(f"repeng vector, {len(ported)} blocks, ported α={alpha:g}", "contrans", TARGET, ported,
                         (alpha,) * len(ported))]
    grid = Grid(cache_root() / "experiments" / "port_repeng_all_layers",
                EvalSettings(tasks=sorted({**TASKS, **FACTS}), limit={"contrans_emotion_happiness": args.emotion_docs},
                             batch_size=args.batch_size, device="cpu", task_metadata=task_metadata(data_folder(args.data))))
    measured = grid.run(rows)
    return {"blocks": [[t.source_layer, t.target_layer, t.heldout_r2] for t in ported], "alpha_share": ported[0].alpha_share,
            "imported": ported[0].extra["imported"], "seconds": time.time() - started,
            "rows": [row.to_json() for row in measured]}


if __name__ == "__main__":
    main()
