"""Does reading depth as i / n change the source block the default build chooses? (issue 33, item 4)

Until 2026-12-07 `source_layer=auto` took the source blocks within 0.15 of the target block's depth read as
i / (n - 1); since, as i / n, the inverse of a fraction's round(f × n). For the packaged pair and every target
block and anchor corpus the saved experiments use with the default build (the shipped corpus at Gemma's
blocks 11, 14 and 16: depths 0.6, 0.75 and 0.9; at block 14 corpus_size.py's seeded subsets of 600 and 1,200
texts and concept_anchors.py's two corpora with concept-set texts), this fits the map at every block of both
candidate sets and prints which block each set chooses (the best held-out R², which does not depend on the
concept). Where both choose one block, the transplant, and every figure made with it, is unchanged.

Run:  python bench/experiments/source_sweep_depths.py   (24 min on 2 cores recording the four other corpora beside the test suite; a minute with the states cached)
"""

from __future__ import annotations

import json
import random

from concept_anchors import SHIPPED, anchor_file, sets_sharing_no_text
from experiment_data import SOURCE, TARGET

SOURCE_BLOCKS, TARGET_BLOCKS, BAND = 30, 18, 0.15


def candidates(block: int, source_depth, target_depth) -> list[int]:
    depth = target_depth(block, TARGET_BLOCKS)
    return [index for index in range(SOURCE_BLOCKS) if abs(source_depth(index, SOURCE_BLOCKS) - depth) <= BAND + 1e-9]


def before(index: int, count: int) -> float:
    return index / (count - 1)


def choices(block: int, anchors: str | None, corpus: str) -> dict:
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.pipeline.depth import relative_depth, source_layer_candidates

    old = candidates(block, before, before)
    new = source_layer_candidates(SOURCE_BLOCKS, relative_depth(block, TARGET_BLOCKS))
    transplant = build_transplant(SOURCE, TARGET, "happiness", source_layer=[sorted(set(old) | set(new))],
                                  target_layer=block, anchors=anchors, device="cpu")
    r2 = {int(index): value for index, value in transplant.extra["source_layer_sweep"].items()}
    return {"corpus": corpus, "target block": block, "before": [old[0], old[-1]], "now": [new[0], new[-1]],
            "chosen before": max(old, key=r2.get), "chosen now": max(new, key=r2.get), "held-out R2": r2}


def main() -> None:
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.cache import cache_root

    folder = cache_root() / "experiments" / "source_sweep_depths"
    folder.mkdir(parents=True, exist_ok=True)
    texts, _ = load_anchor_texts(None)
    corpora = [(14, None, "shipped"), (11, None, "shipped"), (16, None, "shipped")]
    for size in (600, 1200):  # as corpus_size.py draws them
        path = folder / f"anchors{size}.txt"
        path.write_text("\n".join(random.Random(0).sample(texts, size)))
        corpora.append((14, str(path), f"{size} shipped texts"))
    corpora += [(14, str(anchor_file(folder, SHIPPED)), "+ every set"),
                (14, str(anchor_file(folder, sets_sharing_no_text("happiness"))), "+ other sets")]
    for block, anchors, corpus in corpora:
        found = choices(block, anchors, corpus)
        same = "same" if found["chosen before"] == found["chosen now"] else "DIFFERENT"
        print(json.dumps(found), flush=True)
        print(f"{corpus}, target block {block}: candidates {found['before']} -> {found['now']}, chosen "
              f"{found['chosen before']} -> {found['chosen now']} ({same})", flush=True)


if __name__ == "__main__":
    main()
