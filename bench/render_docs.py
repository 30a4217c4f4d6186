"""Writes the tables of docs/RESULTS.md and bench/README.md from the saved runs in bench/results/.

A rendered part of a document lies between `<!-- from bench/results/NAME.json -->` and
`<!-- end bench/results/NAME.json -->`; it is `render(document)` of the script that wrote the file
(the script named in the file's `run.command`, else bench/experiments/NAME.py or bench/perf/NAME.py).
`<!-- from bench/results/NAME.json#PART -->` is the script's `render_PART(document)` instead (a second table of
the same run). A glob (`<!-- from bench/results/perf/*.json -->`) renders one table row per file: its command, then
what the script's `render` returns. Nothing between the markers is written by hand.

Run:  python bench/render_docs.py           (rewrites every rendered part from its saved run)
      python bench/render_docs.py --check   (names the parts that differ from their saved run; exit 1 if any)
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["docs/RESULTS.md", "bench/README.md", "README.md", "docs/VLLM.md"]


def loaded(path: Path, name: str):
    """The module in file `path`, run under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# where a rendered part lies: bench/experiments/experiment_data.py, from its file (the experiments import it by name)
rendered_sections = loaded(REPO / "bench" / "experiments" / "experiment_data.py", "_rendered_experiment_data").rendered_sections


def script_of(saved: Path, document: dict) -> Path:
    command = document.get("run", {}).get("command")
    if command:
        return REPO / shlex.split(command)[1]
    for folder in ("experiments", "perf"):  # a saved run without its command: the script of its name
        if (REPO / "bench" / folder / f"{saved.stem}.py").exists():
            return REPO / "bench" / folder / f"{saved.stem}.py"
    raise SystemExit(f"{saved}: no run.command and no bench script named {saved.stem}.py")


def rendered_by(script: Path, document: dict, part: str = "") -> str:
    """`script`'s render(document), with the script's folder importable as when it runs (the perf scripts
    import their helpers from their own folder, some inside `render`)."""
    sys.path.insert(0, str(script.parent))
    try:
        module = loaded(script, f"_rendered_{script.stem}")
        return getattr(module, f"render_{part}" if part else "render")(document)
    finally:
        sys.path.remove(str(script.parent))


def render_saved(name: str) -> str:
    """The Markdown of one rendered part: one saved run's `render`, or a table with a row per file of a glob."""
    if "*" not in name:
        name, _, part = name.partition("#")  # FILE#part: the script's render_part (one saved run, two tables)
        saved = REPO / name
        document = json.loads(saved.read_text(encoding="utf-8"))
        return rendered_by(script_of(saved, document), document, part)
    lines = ["| command | result |", "|---|---|"]
    for saved in map(Path, sorted(glob.glob(str(REPO / name)))):
        document = json.loads(saved.read_text(encoding="utf-8"))
        run = document.get("run", {})
        where = ", ".join(part for part in (run.get("date"), run.get("machine"), run.get("commit") and f"commit {run['commit']}") if part)
        lines.append(f"| `{run.get('command', saved.name)}` ({where}) | {rendered_by(script_of(saved, document), document).strip().replace(chr(10), '<br>')} |")
    return "\n".join(lines)


def rendered(text: str) -> str:
    """`text` with every rendered part written afresh from its saved run."""
    for name, start, end in reversed(rendered_sections(text)):
        text = text[:start] + render_saved(name).rstrip("\n") + "\n" + text[end:]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which parts differ from their saved runs")
    args = parser.parse_args()
    stale = []
    for relative in DOCUMENTS:
        path = REPO / relative
        text = path.read_text(encoding="utf-8")
        fresh = rendered(text)
        if fresh != text:
            stale += [f"{relative}: {name}" for name, start, end in rendered_sections(text)
                      if text[start:end] != render_saved(name).rstrip("\n") + "\n"]
            if not args.check:
                path.write_text(fresh, encoding="utf-8")
    if not stale:
        print("every rendered part matches its saved run")
    elif args.check:
        raise SystemExit("rendered parts that differ from their saved run (python bench/render_docs.py rewrites them):\n  "
                         + "\n  ".join(stale))
    else:
        print("rewritten from their saved runs:\n  " + "\n  ".join(stale))

if __name__ == "__main__":
    main()
