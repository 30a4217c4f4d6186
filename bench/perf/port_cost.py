"""What porting a many-block steering vector costs: `contrans port` of a vector with a direction at every
block but the first (repeng's default layers: 29 blocks of SmolLM2-135M-Instruct) into Gemma-3-270M,
against a one-block concept build of the same pair, each from a cache holding only the de-quantized GGUF
folders (every anchor state recorded afresh).

Both record the shipped anchor corpus once per model (issue 33: one pass for all the blocks a build needs);
the port then fits one map per block. The directions are seeded Gaussian: the cost does not depend on them.
Run: python bench/perf/port_cost.py [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _timing import SOURCE, TARGET, add_json_argument, fresh_cache_with_gguf, machine, write_json

BLOCKS = range(1, 30)  # SmolLM2-135M has 30 blocks; repeng steers every block but the first by default


def a_vector_at_every_block(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    path = folder / "every_block.safetensors"
    save_file({f"direction.{block}": torch.randn(576, generator=generator) for block in BLOCKS}, str(path))
    return path


def seconds_of(work) -> float:
    fresh_cache_with_gguf()  # every state recorded afresh; the de-quantized models are reused, not timed
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_argument(parser)
    args = parser.parse_args()
    from lm_eval_contrans.pipeline import build_transplant, port_vector

    vector = a_vector_at_every_block(Path(tempfile.mkdtemp(prefix="contrans-port-bench-")))
    print(f"machine: {machine()}")
    build = seconds_of(lambda: build_transplant(SOURCE, TARGET, "sentiment", device="cpu"))
    ported = []
    port = seconds_of(lambda: ported.extend(port_vector(SOURCE, TARGET, vector, device="cpu")))
    print(f"one-block concept build {build:.0f} s; port of {len(BLOCKS)} blocks {port:.0f} s "
          f"({len(ported)} transplants): RATIO port / build = {port / build:.2f}")
    write_json(args.json, {"blocks": len(BLOCKS), "transplants": len(ported), "build_s": build, "port_s": port})


def render(document: dict) -> str:
    """The port's time against the one-block build's, from a saved run."""
    return (f"a {document['blocks']}-block vector ported in {document['port_s']:.0f} s ({document['transplants']} "
            f"transplants), a one-block concept build {document['build_s']:.0f} s, from the same cold cache: "
            f"**{document['port_s'] / document['build_s']:.2f} ×**")


if __name__ == "__main__":
    main()
