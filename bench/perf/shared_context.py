"""Loglikelihood scoring with and without shared contexts.

With `share_context=True`, `ConTransLM` (and FastScoringHFLM) runs a context shared by several
multi-token choices once and reuses its key/value cache for each choice (see
lm_eval_contrans/hf/shared_context.py); without it, HFLM runs context + choice in full for every choice. Both settings keep the
scored-position window.

Default: the shipped tasks on the packaged pair, steered at alpha 1, each task both ways in one
process, interleaved: seconds, the speed-up, and the largest difference between the two runs'
per-choice log-likelihoods (float rounding: a cached pass multiplies in a different order).
--synthetic: no task data or packaged model needed (for a lent GPU): a random-weight model in
Gemma-3-270M's shapes (262k vocabulary) scores TruthfulQA-shaped documents (a few-shot context,
several choices) both ways: HFLM's batching of full passes vs one context pass per document.

Run:  python bench/perf/shared_context.py --data ../shared/data   (about 8 min on 2 cores)
      python bench/perf/shared_context.py --synthetic [--device cuda --dtype bfloat16]
      (on a machine where the package is not installed: PYTHONPATH=. python bench/perf/shared_context.py ...)
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from _timing import add_json_argument, write_json


def synthetic_documents(count: int, context_tokens: int, choices: int, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    return [([rng.randrange(4, vocab) for _ in range(context_tokens)],
             [[rng.randrange(4, vocab) for _ in range(rng.randint(4, 24))] for _ in range(choices)])
            for _ in range(count)]


@torch.no_grad()
def full_passes(model, documents, batch_size: int) -> list[float]:
    """HFLM's way: every (context + choice) a row, right-padded batches, longest first, only the
    scored window projected (as FastScoringHFLM's window does)."""
    device = next(model.parameters()).device
    rows = sorted(((context + choice[:-1], choice) for context, choices in documents for choice in choices),
                  key=lambda row: -len(row[0]))
    scores = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(inputs) for inputs, _ in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, (inputs, _) in enumerate(batch):
            ids[row, :len(inputs)] = torch.tensor(inputs, device=device)
        window = width - min(len(inputs) for inputs, _ in batch) + max(len(choice) for _, choice in batch)
        log_probs = torch.log_softmax(model(ids, logits_to_keep=window).logits.float(), dim=-1)
        for row, (inputs, choice) in enumerate(batch):
            end = len(inputs) - width + window  # position of the last scored logit, counted in the window
            steps = log_probs[row, end - len(choice):end]
            scores.append(float(steps.gather(1, torch.tensor(choice, device=device)[:, None]).sum()))
    return scores


def synthetic(args) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from lm_eval_contrans.hf.shared_context import score_continuations

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512)
    model = Gemma3ForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    documents = synthetic_documents(args.documents, args.context_tokens, args.choices, config.vocab_size)

    def synchronized(run):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    def shared():
        return [score for context, choices in documents
                for score, _ in score_continuations(model, context, choices, batch_size=args.batch_size,
                                                    softmax_dtype=torch.float32)]

    full_passes(model, documents[:2], args.batch_size)  # warm-up
    seconds = {"each choice in full": [], "shared contexts": []}
    scores = {}
    for _ in range(2):  # interleaved
        for name, run in (("each choice in full", lambda: full_passes(model, documents, args.batch_size)),
                          ("shared contexts", shared)):
            elapsed, scores[name] = synchronized(run)
            seconds[name].append(elapsed)
    # full_passes scores longest-first; compare as sorted multisets of per-choice scores
    difference = max(abs(a - b) for a, b in zip(sorted(scores["each choice in full"]), sorted(scores["shared contexts"])))
    full, fast = min(seconds["each choice in full"]), min(seconds["shared contexts"])
    print(f"{args.documents} documents x {args.choices} choices, context {args.context_tokens} tokens, batch "
          f"{args.batch_size}, {args.device} {args.dtype}: each choice in full {full:.2f} s, shared contexts {fast:.2f} s "
          f"-> {full / fast:.2f} x; max |difference| of sorted per-choice scores {difference:.1e}", flush=True)
    write_json(args.json, {"full_s": full, "shared_s": fast, "ratio": full / fast, "max_difference": difference,
                           "documents": args.documents, "choices": args.choices, "device": args.device, "dtype": args.dtype})


def main() -> None:
    if "--synthetic" not in sys.argv:
        from scored_window import compare_scoring

        compare_scoring(__doc__.splitlines()[0], {
            "each choice in full": {"share_context": False, "score_continuations_only": True},
            "shared contexts": {"share_context": True, "score_continuations_only": True},
        })
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=400)
    parser.add_argument("--choices", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    add_json_argument(parser)
    synthetic(parser.parse_args())


def render(document: dict) -> str:
    """Every choice in full against shared contexts, from a saved run (real tasks, or --synthetic)."""
    if "rows" in document:
        from scored_window import render as per_task

        return per_task(document)
    return (f"{document['documents']} documents × {document['choices']} choices, {document['device']} {document['dtype']}: "
            f"each choice in full {document['full_s']:.2f} s, shared contexts {document['shared_s']:.2f} s → "
            f"**{document['ratio']:.2f} ×**; largest difference {document['max_difference']:.1e}")


if __name__ == "__main__":
    main()
