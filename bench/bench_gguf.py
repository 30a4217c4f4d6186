"""GGUF loading: first load (de-quantize + cache) vs second load of the same file.

Target (issue 5): the second load >= 5x faster than the first. Run: python bench/bench_gguf.py
"""

from __future__ import annotations

import os
import tempfile
import time

from _common import SOURCE, TARGET, machine


def main() -> None:
    from lm_eval_contrans.loading import load_model

    os.environ["CONTRANS_CACHE"] = tempfile.mkdtemp(prefix="contrans-gguf-bench-")
    print(f"machine: {machine()}; empty cache {os.environ['CONTRANS_CACHE']}")
    for name in (SOURCE, TARGET):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            model, _ = load_model(name, device="cpu")
            times.append(time.perf_counter() - start)
            del model
        print(f"{name}: first load {times[0]:.1f} s, second load {times[1]:.2f} s; "
              f"RATIO first / second = {times[0] / times[1]:.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
