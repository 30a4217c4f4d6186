"""GGUF loading: first load (de-quantize + cache) vs second load of the same file; and the first load
with each file's metadata parsed once (`loading.gguf_files.gguf_parsed_once`, the default) vs parsed afresh for
the config, the tokenizer and the weights, as transformers does alone.

Targets: the second load >= 5x faster than the first (issue 5); parsing once shortens the first load
(issue 18). Run: python bench/perf/gguf_load.py
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

from _timing import SOURCE, TARGET, add_json_argument, machine, write_json


def first_and_second_load(name: str) -> tuple[float, float]:
    from lm_eval_contrans.loading import load_model

    os.environ["CONTRANS_CACHE"] = tempfile.mkdtemp(prefix="contrans-gguf-bench-")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model, _ = load_model(name, device="cpu")
        times.append(time.perf_counter() - start)
        del model
    return times[0], times[1]


def main() -> None:
    import argparse

    from lm_eval_contrans.loading import gguf_files  # where dequantized_gguf_folder looks gguf_parsed_once up

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_argument(parser)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    document = {}
    for name in (SOURCE, TARGET):
        once_first, second = first_and_second_load(name)
        parse_once = gguf_files.gguf_parsed_once
        gguf_files.gguf_parsed_once = contextlib.nullcontext
        try:
            afresh_first, _ = first_and_second_load(name)
        finally:
            gguf_files.gguf_parsed_once = parse_once
        print(f"{name}: first load {once_first:.1f} s (metadata parsed once) vs {afresh_first:.1f} s (parsed "
              f"afresh each time): RATIO {afresh_first / once_first:.2f}x; second load {second:.2f} s: "
              f"RATIO first / second = {once_first / second:.1f}  (target >= 5)")
        document[name] = {"first_parsed_once_s": once_first, "first_parsed_afresh_s": afresh_first, "second_s": second}
    write_json(args.json, document)


def render(document: dict) -> str:
    """First and second loads of each GGUF file, from a saved run."""
    return "; ".join(f"{name}: first load {row['first_parsed_once_s']:.1f} s vs {row['first_parsed_afresh_s']:.1f} s with "
                     f"the metadata parsed afresh (**{row['first_parsed_afresh_s'] / row['first_parsed_once_s']:.2f} ×**), "
                     f"second load {row['second_s']:.2f} s (**{row['first_parsed_once_s'] / row['second_s']:.0f} ×** faster)"
                     for name, row in document.items() if name != "run")


if __name__ == "__main__":
    main()
