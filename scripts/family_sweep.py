"""Every causal-LM family of the installed transformers, tiny and random, through block discovery and the steer.

tests/test_model_families.py runs the families listed in tests/model_families.py end to end (build,
steer, lm-eval). This sweep reaches the others: for each model type in transformers' causal-LM
mapping it builds a model from the common tiny sizes, finds its decoder blocks, and checks that a
vector added at the last block moves the logits at alpha 1 and leaves them bit-identical at alpha 0.
Each family runs in its own process under a memory limit (some default configs allocate gigabytes).
A family whose tiny model cannot be built from the common sizes is counted apart: it was not reached.

Run:  python scripts/family_sweep.py            (the families the tests do not list; a few minutes)
      python scripts/family_sweep.py --all      (every family)
      python scripts/family_sweep.py qwen3_5_text --extra '{"layer_types": ["linear_attention", "full_attention"]}'
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
MEMORY_LIMIT = 6 * 2**30


def check_family(family: str, extra: dict) -> dict:
    """{"family", "stage", "result"}: the first stage that failed, or stage "done" and result "ok"."""
    import logging
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(TESTS))
    from conftest import _byte_bpe_tokenizer
    from model_families import tiny_config

    from lm_eval_contrans.blocks import decoder_blocks
    from lm_eval_contrans.pipeline.depth import residual_width
    from lm_eval_contrans.transplant import steer

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    tokenizer = _byte_bpe_tokenizer()
    stage = "tiny model"  # not reached: the common sizes do not make a model of this family
    try:
        config = tiny_config(family, len(tokenizer), tokenizer.eos_token_id, extra)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        ids = torch.tensor([[5, 17, 33, 60, 101, 7]])
        with torch.no_grad():
            plain = model(input_ids=ids).logits
        stage = "blocks"
        layer = len(decoder_blocks(model)) - 1
        stage = "steer"
        vector = torch.randn(residual_width(model), generator=torch.Generator().manual_seed(0)) * 10
        with torch.no_grad(), steer(model, layer, vector, alpha=1.0):
            moved = not torch.allclose(model(input_ids=ids).logits, plain)
        with torch.no_grad(), steer(model, layer, vector, alpha=0.0):
            unchanged = torch.equal(model(input_ids=ids).logits, plain)
        if not (moved and unchanged):
            return {"family": family, "stage": stage, "result": f"logits moved at alpha 1: {moved}; "
                                                                f"identical at alpha 0: {unchanged}"}
        return {"family": family, "stage": "done", "result": "ok"}
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0][:160]
        return {"family": family, "stage": stage, "result": f"{type(error).__name__}: {first_line}"}


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="model types to check (default: those the tests do not list)")
    parser.add_argument("--all", action="store_true", help="every causal-LM family, the tested ones too")
    parser.add_argument("--extra", default="{}", help="JSON config fields added to the common tiny sizes")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(check_family(args.one, json.loads(args.extra))))
        return

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    sys.path.insert(0, str(TESTS))
    from model_families import FAMILIES

    families = args.families or [family for family in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
                                 if args.all or family not in FAMILIES]
    results = []
    for family in families:
        try:
            child = subprocess.run([sys.executable, __file__, "--one", family, "--extra", args.extra],
                                   capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {
                "family": family, "stage": "tiny model", "result": f"the process ended with {child.returncode}"}
        except subprocess.TimeoutExpired:
            result = {"family": family, "stage": "tiny model", "result": "over 300 s"}
        results.append(result)
        print(f"{family:28s} {result['stage']:10s} {result['result']}", flush=True)
    counts = Counter(result["stage"] for result in results)
    print(f"\n{len(results)} families: {counts['done']} pass; {counts['tiny model']} not reached (no tiny model from "
          f"the common sizes); failed in this package: {counts['blocks']} at block discovery, {counts['steer']} at the steer")


if __name__ == "__main__":
    main()
