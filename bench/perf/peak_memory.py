"""Peak memory: a contrans eval that builds its vector vs the plain hf eval of the same target.

Target (issue 5): peak RSS(contrans, building) <= 1.15 x peak RSS(hf). Each eval runs in its own
child process (`lm_eval` Python API on contrans_sentiment); peak RSS is the child's ru_maxrss.
The state cache starts empty, so the contrans child really loads the source and builds.

Run: python bench/perf/peak_memory.py [--dtype bfloat16] [--recipe reference]
"""

from __future__ import annotations

import os
import subprocess
import sys

from _timing import SOURCE, TARGET, add_json_argument, fresh_cache_with_gguf, machine, write_json

CHILD = """
import sys, lm_eval
model, model_args = sys.argv[1], sys.argv[2]
lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["contrans_sentiment"], limit=20,
                        device="cpu", batch_size=8)
"""


def peak_rss_mib(model: str, model_args: str) -> float:
    process = subprocess.Popen([sys.executable, "-c", CHILD, model, model_args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{model} child failed:\n{process.stderr.read()[-3000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    import argparse

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    add_json_argument(parser)
    args = parser.parse_args()
    fresh_cache_with_gguf()  # the GGUF folders exist; the state cache is empty
    folder = pretrained_path(parse_model_spec(TARGET, "target"))
    print(f"machine: {machine()}; dtype {args.dtype}; recipe {args.recipe}")
    hf = peak_rss_mib("hf", f"pretrained={folder},dtype={args.dtype}")
    contrans = peak_rss_mib("contrans", f"source={SOURCE},target={TARGET},concept=sentiment,dtype={args.dtype},recipe={args.recipe}")
    print(f"peak RSS: hf {hf:.0f} MiB, contrans (building) {contrans:.0f} MiB; "
          f"RATIO contrans / hf = {contrans / hf:.3f}  (target <= 1.15)")
    write_json(args.json, {"dtype": args.dtype, "recipe": args.recipe, "hf_mib": hf, "contrans_mib": contrans, "ratio": contrans / hf})


def render(document: dict) -> str:
    """Peak RSS of the two evaluations, from a saved run."""
    recipe = document.get("recipe", "default")  # runs saved before --recipe measured the default
    return (f"{document['dtype']}, {recipe} recipe: peak RSS hf {document['hf_mib']:,.0f} MiB, contrans building "
            f"{document['contrans_mib']:,.0f} MiB → **{document['ratio']:.3f} ×**")


if __name__ == "__main__":
    main()
