"""What alpha means for a ported vector with several blocks (repeng and llama.cpp's cvector-generator
write one direction per block, by default at nearly every block).

A file of that shape, made here from the source's own sentiment vectors at five source blocks (unit
norm each, as repeng writes them), is ported into the target by `contrans port`'s pipeline: each
block gets its own map and lands at the target block of the same relative depth. In residual units
the blocks share alpha (`Transplant.alpha_share` = 1/5: each adds a fifth of its block's unit) and are
compared with alpha at each block (five times the push), against the one-block sentiment transplant at
alpha 1 and the unsteered target, on contrans_sentiment and the facts (all documents, shipped tasks).

Run:  python bench/experiments/ported_blocks.py --json bench/results/ported_blocks.json   (a minute on 2 cores with the anchor states cached)
"""

from __future__ import annotations

import argparse

from experiment_data import SOURCE, TARGET, add_json_argument, machine, printed_from_saved, write_json

BLOCKS = (20, 22, 24, 26, 28)  # source blocks around the default build's choice (26) for the target's 0.75 block
TASKS = ("contrans_sentiment", "contrans_facts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser, render=True)
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return

    from safetensors.torch import save_file

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant, port_vector
    from lm_eval_contrans.pipeline.states import StateRequest, record_concept_states

    print(f"machine: {machine()}", flush=True)
    folder = cache_root() / "experiments" / "ported_blocks"
    folder.mkdir(parents=True, exist_ok=True)
    states = record_concept_states(SOURCE, [StateRequest(load_concept_set("sentiment"), list(BLOCKS))],
                                   anchor_texts=load_anchor_texts(None)[0], anchor_tokens="dense", device="cpu")[0]
    file = folder / "sentiment_5_blocks.safetensors"
    save_file({f"direction.{block}": (states.concept_vectors[block] / states.concept_vectors[block].norm()).float().contiguous()
               for block in BLOCKS}, str(file))
    ported = port_vector(SOURCE, TARGET, file, device="cpu")
    one_block = build_transplant(SOURCE, TARGET, "sentiment", device="cpu")
    grid = Grid(folder, EvalSettings(tasks=list(TASKS), batch_size=args.batch_size, device="cpu"))
    each = tuple(1 / transplant.alpha_share for transplant in ported)  # alpha 1 at each block
    rows = grid.run([GridRow("unsteered target", "base", TARGET, alpha=0.0),
                     GridRow("sentiment transplant, one block, α 1", "contrans", TARGET, one_block, 1.0),
                     GridRow(f"ported, {len(ported)} blocks, α 1 shared (default)", "contrans", TARGET, ported, (1.0,) * len(ported)),
                     GridRow(f"ported, {len(ported)} blocks, α 1 at each block", "contrans", TARGET, ported, each)])
    document = {"blocks": {"one block": [[one_block.source_layer, one_block.target_layer]],
                           "ported": [[t.source_layer, t.target_layer] for t in ported]},
                "shares": [t.alpha_share for t in ported], "rows": [row.to_json() for row in rows]}
    write_json(args.json, document)
    print(render(document))


def render(document: dict) -> str:
    """The docs table, from what `main` measured."""
    from lm_eval_contrans.experiments.report import Row

    arrows = lambda pairs: ", ".join(f"{s}→{t}" for s, t in pairs)  # noqa: E731
    lines = [f"Blocks (source → target): one block {arrows(document['blocks']['one block'])}; ported "
             f"{arrows(document['blocks']['ported'])}, each with alpha share {document['shares'][0]:g}.", "",
             "| steering | contrans_sentiment acc_norm | margin | contrans_facts acc |", "|---|---|---|---|"]
    for row in map(lambda saved: Row(**saved), document["rows"]):
        lines.append(f"| {row.name} | {row.value('contrans_sentiment', 'acc_norm'):.3f} | "
                     f"{row.value('contrans_sentiment', 'margin'):.3f} ± {row.value('contrans_sentiment', 'margin_stderr'):.3f} | "
                     f"{row.value('contrans_facts', 'acc'):.3f} ± {row.value('contrans_facts', 'acc_stderr'):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
