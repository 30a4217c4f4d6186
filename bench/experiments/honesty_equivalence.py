"""contrans_honesty_mc1/mc2 vs lm-eval's built-in truthfulqa_mc1/mc2 on the same local file, base Gemma-3-270M.

The two must give identical scores (same prompt, same scoring). Runs `lm_eval --model hf` once on
the four tasks; the built-in ones are pointed at the local file by a generated --include_path YAML.

Run: python bench/experiments/honesty_equivalence.py [--limit 100] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from experiment_data import (
    TARGET, add_data_argument, add_json_argument, data_folder, machine, task_metadata, write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--limit", type=int, default=100)
    add_json_argument(parser)
    args = parser.parse_args()
    truthfulqa = task_metadata(data_folder(args.data))["truthfulqa_data"]

    import lm_eval.tasks

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    folder = Path(tempfile.mkdtemp())
    builtin = Path(lm_eval.tasks.__file__).parent / "truthfulqa"
    for kind in ("mc1", "mc2"):
        (folder / f"local_truthfulqa_{kind}.yaml").write_text(
            f"include: {builtin / f'truthfulqa_{kind}.yaml'}\ntask: local_truthfulqa_{kind}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: {truthfulqa}\n")
    output = folder / "out"
    target = pretrained_path(parse_model_spec(TARGET, "target"))
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={target}",
               "--tasks", "contrans_honesty_mc1,contrans_honesty_mc2,local_truthfulqa_mc1,local_truthfulqa_mc2",
               "--include_path", str(folder), "--metadata", json.dumps({"truthfulqa_data": truthfulqa}),
               "--limit", str(args.limit), "--device", "cpu", "--batch_size", "8", "--output_path", str(output)]
    print(f"machine: {machine()}\n$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = json.loads(sorted(output.rglob("results_*.json"))[-1].read_text())["results"]
    document = {"limit": args.limit}
    for kind in ("mc1", "mc2"):
        document[kind] = {"contrans": results[f"contrans_honesty_{kind}"]["acc,none"],
                          "lm_eval": results[f"local_truthfulqa_{kind}"]["acc,none"]}
    print(render(document))
    write_json(args.json, document)


def render(document: dict) -> str:
    """Both scores of each task and whether they are identical, from a saved run."""
    return "; ".join(f"{kind}: contrans_honesty_{kind} {row['contrans']:.6f} vs truthfulqa_{kind} {row['lm_eval']:.6f} "
                     f"({'identical' if row['contrans'] == row['lm_eval'] else 'DIFFERENT'})"
                     for kind, row in document.items() if kind in ("mc1", "mc2")) + f" (first {document['limit']} questions)"


if __name__ == "__main__":
    main()
