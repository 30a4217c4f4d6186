"""Eval-time overhead of steering: `contrans` (saved artifact) vs plain `hf`, same target, same requests.

Target (issue 5): throughput ratio contrans / hf >= 0.97 for loglikelihood (TruthfulQA MC2 docs:
every "Q: ...\\nA:" + " <answer>" pair) and for generation (prompts x 32 new tokens), in float32 and
bfloat16. `contrans` scores log-likelihoods with the package's shortcuts (shared contexts, the scored
window), so against `hf` it is faster, not slower; the steering hook's own cost is read against
`hf + shortcuts` (FastScoringHFLM: the same scoring, no hook). Runs are interleaved (the order turns
each repeat) and the median of each is compared, because this machine is noisy.

Run: python bench/perf/eval_overhead.py --data ../shared/data [--docs 100 --generations 25] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from _timing import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, fresh_cache_with_gguf, interleaved_medians, machine,
    task_metadata, write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser)
    args = parser.parse_args()
    document = {"docs": args.docs, "generations": args.generations, "tokens": args.tokens, "rows": []}

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.hf.scoring import FastScoringHFLM

    fresh_cache_with_gguf()
    artifact = os.path.join(tempfile.mkdtemp(), "sentiment.safetensors")
    save_transplant(build_transplant(SOURCE, TARGET, "sentiment", device="cpu"), artifact)
    truthfulqa = task_metadata(data_folder(args.data))["truthfulqa_data"]
    docs = [json.loads(line) for line in open(truthfulqa, encoding="utf-8")][: args.docs]
    pairs = [(f"Q: {doc['question']}\nA:", f" {choice}") for doc in docs for choice in doc["mc2_targets"]["choices"]]
    loglikelihood_requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    generation_kwargs = {"until": ["<never-stop>"], "max_gen_toks": args.tokens, "min_new_tokens": args.tokens,
                         "do_sample": False}
    generate_requests = [Instance("generate_until", {}, (f"Q: {doc['question']}\nA:", dict(generation_kwargs)), i)
                         for i, doc in enumerate(docs[: args.generations])]
    print(f"machine: {machine()}; {len(docs)} docs -> {len(pairs)} loglikelihood requests; "
          f"{len(generate_requests)} generations x {args.tokens} tokens")

    folder = pretrained_path(parse_model_spec(TARGET, "target"))
    for dtype in args.dtype:
        models = {
            "hf": HFLM(pretrained=folder, device="cpu", dtype=dtype, batch_size=args.batch_size),
            "hf + shortcuts": FastScoringHFLM(pretrained=folder, device="cpu", dtype=dtype, batch_size=args.batch_size),
            "contrans": ConTransLM(target=TARGET, vector=artifact, alpha=1.0, device="cpu", dtype=dtype,
                                   batch_size=args.batch_size),
        }
        for kind, run in [("loglikelihood", lambda lm: lm.loglikelihood(loglikelihood_requests, disable_tqdm=True)),
                          ("generation", lambda lm: lm.generate_until(generate_requests, disable_tqdm=True))]:
            seconds = interleaved_medians({name: (lambda lm=lm: run(lm)) for name, lm in models.items()}, args.repeats)
            print(f"[{dtype}] {kind}: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
                  + f" (medians of {args.repeats}); RATIO throughput contrans / hf = {seconds['hf'] / seconds['contrans']:.3f} "
                  f"(target >= 0.97), contrans / hf + shortcuts = {seconds['hf + shortcuts'] / seconds['contrans']:.3f}", flush=True)
            document["rows"].append({"dtype": dtype, "kind": kind, "seconds": seconds})
        del models
    write_json(args.json, document)


def render(document: dict) -> str:
    """Throughput of `--model contrans` against `--model hf` and against the same scoring without the hook, from a saved run."""
    work = {"loglikelihood": f"{document['docs']} TruthfulQA MC2 docs",
            "generation": f"{document['generations']} generations × {document['tokens']} tokens"}

    def row(entry: dict) -> str:
        seconds = entry["seconds"]
        return (f"{entry['dtype']}, {work[entry['kind']]}: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
                + f" → contrans / hf **{seconds['hf'] / seconds['contrans']:.3f}**, "
                  f"contrans / hf + shortcuts (the hook alone) **{seconds['hf + shortcuts'] / seconds['contrans']:.3f}**")
    return "; ".join(row(entry) for entry in document["rows"])


if __name__ == "__main__":
    main()
