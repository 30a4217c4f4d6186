"""Where experiments find their data, their models and the machine they ran on, and where their
numbers go: a JSON file per run (`write_json`), and the parts of the docs rendered from those files
(`rendered_sections`, `replace_rendered`; bench/render_docs.py writes and checks them).

The experiments in this folder import it by name (a script's folder is on its path); the benchmarks
in bench/perf through their `_timing.py`, and bench/render_docs.py, load it from this file. It is not
part of the package: nothing here ships in the wheel.

The public evaluation data (TruthfulQA, ToxiGen, emotion scenarios, WikiSplit anchors) is not shipped:
an experiment takes its folder from `--data`, else `$CONTRANS_DATA`, and says so when neither names
one that exists.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

from lm_eval_contrans.errors import ConTransError

REPOSITORY = Path(__file__).resolve().parents[2]
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
    """--json FILE (the numbers, written after a run); with `render`, also --render (print from FILE).

    A script makes its parser when its run starts: the commit its saved file records is taken here."""
    commit_at_start()
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
    """The numbers a script printed, for the tables made from them (nothing when `path` is None).

    The file also records how it was made (`run`: the command, the date, the commit and the machine), so
    a table rendered from it can name the command that reproduces it."""
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**document, "run": run_record()}, indent=1, default=str) + "\n")


CODE_PATHS = ("lm_eval_contrans", "bench/perf", "bench/experiments", "tasks", "concept_sets")


def code_commit() -> str | None:
    """The checked-out commit, with "-dirty" when the code (not the saved results) differs from it."""
    import subprocess

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--", *CODE_PATHS) else "")


@functools.cache
def commit_at_start() -> str | None:
    """`code_commit()` when first asked, the same answer after: a long run records the code it started
    with, not what is checked out when it writes its file. A script asks when its run starts
    (`add_json_argument`, or by calling this first); importing this module runs no git."""
    return code_commit()


def run_record() -> dict:
    """The command line (script path relative to the repository), date, commit and machine of this run."""
    import datetime
    import shlex
    import sys

    script = Path(sys.argv[0]).resolve()
    try:
        script_name = script.relative_to(REPOSITORY).as_posix()
    except ValueError:
        script_name = script.name
    return {"command": shlex.join(["python", script_name, *sys.argv[1:]]), "date": datetime.date.today().isoformat(),
            "commit": commit_at_start(), "machine": machine()}


# A rendered part of a Markdown document lies between these two lines; the first names the saved run
# (a JSON file, or a glob of several: one table row each) it is rendered from.
SECTION_START = re.compile(r"^<!-- from (\S+) -->$", re.MULTILINE)
SECTION_END = "<!-- end {} -->"


def rendered_sections(text: str) -> list[tuple[str, int, int]]:
    """(saved-run path or glob, start, end) of each rendered part of `text` (offsets of its contents)."""
    sections = []
    for match in SECTION_START.finditer(text):
        end = text.find(SECTION_END.format(match.group(1)), match.end())
        if end < 0:
            raise ConTransError("render", f"{match.group(0)} has no closing {SECTION_END.format(match.group(1))}")
        sections.append((match.group(1), match.end() + 1, end))
    return sections


def replace_rendered(text: str, saved: str, markdown: str) -> str:
    """`text` with the part rendered from `saved` replaced by `markdown` (appended, with its markers, if absent)."""
    for name, start, end in rendered_sections(text):
        if name == saved:
            return text[:start] + markdown.rstrip("\n") + "\n" + text[end:]
    return text.rstrip("\n") + f"\n\n<!-- from {saved} -->\n{markdown.rstrip()}\n{SECTION_END.format(saved)}\n"
