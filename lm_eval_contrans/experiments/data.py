"""Where experiments find their data, their models and the machine they ran on.

The public evaluation data (TruthfulQA, ToxiGen, emotion scenarios, WikiSplit anchors) is not shipped:
an experiment takes its folder from `--data`, else `$CONTRANS_DATA`, and says so when neither names
one that exists.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from lm_eval_contrans.errors import ConTransError

SOURCE, TARGET = "packaged:smollm2-135m-instruct", "packaged:gemma-3-270m"
DATA_ENV = "CONTRANS_DATA"
# what a data folder holds, relative to it: the shipped tasks' --metadata keys point at these
DATA_FILES = {"truthfulqa_data": "truthfulqa/truthfulqa_mc_dev.jsonl", "toxigen_data": "toxigen",
              "emotion_data": "emotions/scenarios_dev.json"}


def data_folder(given: str | os.PathLike | None = None) -> Path:
    """The data folder: `given`, else $CONTRANS_DATA; an error that says how to name it otherwise."""
    value = given or os.environ.get(DATA_ENV)
    if not value:
        raise ConTransError("data", f"name the data folder with --data <folder> or {DATA_ENV}=<folder> "
                                    "(it holds truthfulqa/, toxigen/, emotions/ and anchors/; this project "
                                    "keeps one at ../shared/data)")
    folder = Path(value).expanduser()
    missing = [relative for relative in DATA_FILES.values() if not (folder / relative).exists()]
    if missing:
        raise ConTransError("data", f"{folder} lacks {', '.join(missing)}: not a data folder for these experiments")
    return folder


def task_metadata(folder: str | os.PathLike) -> dict:
    """lm-eval --metadata pointing every shipped task at the local copies in the data folder."""
    return {key: str(Path(folder) / relative) for key, relative in DATA_FILES.items()}


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.node() or 'host'}: {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}")


def add_data_argument(parser) -> None:
    parser.add_argument("--data", default=None, help=f"the data folder (default: ${DATA_ENV})")


def add_pair_arguments(parser) -> None:
    """--source/--target (default: the packaged pair) and --device, for runs on other machines."""
    parser.add_argument("--source", default=SOURCE, help="source model (default: the packaged SmolLM2)")
    parser.add_argument("--target", default=TARGET, help="target model (default: the packaged Gemma 3)")
    parser.add_argument("--device", default="cpu")


def add_json_argument(parser, default: str | None = None, render: bool = False) -> None:
    """--json FILE (the numbers, written after a run); with `render`, also --render (print from FILE)."""
    parser.add_argument("--json", default=default, help="also write the numbers to this JSON file")
    if render:
        parser.add_argument("--render", action="store_true", help="print the tables from --json without running a model")


def printed_from_saved(args, render) -> bool:
    """With --render, print `render(the saved --json document)` and say so (the script stops there)."""
    if not getattr(args, "render", False):
        return False
    if not args.json or not Path(args.json).is_file():
        raise ConTransError("render", f"--render prints from a saved run: give --json FILE of one "
                                      f"({args.json or 'none given'} is not a file; run without --render to make it)")
    import json

    print(render(json.loads(Path(args.json).read_text())))
    return True


def write_json(path: str | os.PathLike | None, document: dict) -> None:
    """The numbers a script printed, for the tables made from them (nothing when `path` is None)."""
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=1, default=str) + "\n")
