"""Peak memory: a contrans eval that builds its vector vs the plain hf eval of the same target.

Target (issue 5): peak RSS(contrans, building) <= 1.15 x peak RSS(hf). Each eval runs in its own
child process (`lm_eval` Python API on contrans_sentiment); peak RSS is the child's ru_maxrss.
The state cache starts empty, so the contrans child really loads the source and builds.

Run: python bench/perf/peak_memory.py [--dtype bfloat16] [--recipe reference] [--trace]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from _timing import SOURCE, TARGET, add_json_argument, fresh_cache_with_gguf, machine, write_json

CHILD = """
import logging, sys, threading, time, lm_eval
model, model_args, trace = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if trace:  # sample the resident set every 5 ms; remember the last log line before the highest sample
    messages, peak = ["start-up"], [0, ""]

    class Remember(logging.Handler):
        def emit(self, record):
            messages.append(f"{record.name}: {record.getMessage()[:120]}")

    logging.getLogger().addHandler(Remember())
    logging.getLogger().setLevel(logging.INFO)

    def sample():
        while True:
            with open("/proc/self/status") as status:
                rss = int(next(line for line in status if line.startswith("VmRSS")).split()[1])
            if rss > peak[0]:
                peak[:] = [rss, messages[-1]]
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["contrans_sentiment"], limit=20,
                        device="cpu", batch_size=8)
if trace:
    print(f"{peak[0] / 1024:,.0f} MiB, after: {peak[1]}")
"""


def peak_rss_mib(model: str, model_args: str, trace: bool = False) -> float:
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a full pipe would stall the child
        process = subprocess.Popen([sys.executable, "-c", CHILD, model, model_args, "1" if trace else "0"],
                                   stdout=subprocess.PIPE if trace else subprocess.DEVNULL, stderr=errors, text=True)
        traced = process.stdout.read() if trace else ""
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            errors.seek(0)
            raise SystemExit(f"{model} child failed:\n{errors.read()[-3000:]}")
    if trace:
        print(f"  {model}: highest sampled resident set {traced.strip().splitlines()[-1]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    import argparse

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--recipe", default="default", choices=["default", "reference"])
    parser.add_argument("--trace", action="store_true",
                        help="also print each child's highest sampled resident set and the log line before it")
    add_json_argument(parser)
    args = parser.parse_args()
    fresh_cache_with_gguf()  # the GGUF folders exist; the state cache is empty
    folder = pretrained_path(parse_model_spec(TARGET, "target"))
    print(f"machine: {machine()}; dtype {args.dtype}; recipe {args.recipe}")
    hf = peak_rss_mib("hf", f"pretrained={folder},dtype={args.dtype}", args.trace)
    contrans = peak_rss_mib("contrans", f"source={SOURCE},target={TARGET},concept=sentiment,dtype={args.dtype},"
                                        f"recipe={args.recipe}", args.trace)
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
