"""The tables of docs/RESULTS.md and bench/README.md are rendered from the saved runs in bench/results/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from experiment_data import rendered_sections, replace_rendered, write_json
from lm_eval_contrans.errors import ConTransError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", REPO / "bench" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("document", ["docs/RESULTS.md", "bench/README.md", "README.md", "docs/VLLM.md"])
def test_every_rendered_table_equals_its_saved_run(render_docs, document):
    text = (REPO / document).read_text(encoding="utf-8")
    for name, start, end in rendered_sections(text):
        saved = name.partition("#")[0]  # FILE#part: a second table of one saved run
        assert "*" in name or (REPO / saved).is_file(), f"{document} renders from {saved}, which is not in the repository"
        assert text[start:end] == render_docs.render_saved(name).rstrip("\n") + "\n", (
            f"{document}: the part from {name} was edited by hand or its saved run changed; "
            "python bench/render_docs.py rewrites it")


def test_the_results_document_renders_saved_runs(render_docs):
    names = [name for name, _, _ in rendered_sections((REPO / "docs" / "RESULTS.md").read_text(encoding="utf-8"))]
    assert {"bench/results/port_repeng.json", "bench/results/shuffled_labels.json"} <= set(names)


def test_a_section_is_replaced_between_its_markers_and_appended_when_absent():
    text = "intro\n<!-- from a.json -->\nold table\n<!-- end a.json -->\nafter\n"
    assert replace_rendered(text, "a.json", "new table") == "intro\n<!-- from a.json -->\nnew table\n<!-- end a.json -->\nafter\n"
    appended = replace_rendered("intro\n", "b.json", "| b |")
    assert appended == "intro\n\n<!-- from b.json -->\n| b |\n<!-- end b.json -->\n"
    assert [name for name, _, _ in rendered_sections(appended)] == ["b.json"]
    with pytest.raises(ConTransError, match="no closing <!-- end c.json -->"):
        rendered_sections("<!-- from c.json -->\n| c |\n")


def test_a_saved_run_names_its_command_and_a_glob_renders_one_row_each(render_docs, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(REPO / "bench" / "experiments" / "content_free.py"), "--json", "x.json"])
    saved = json.loads((REPO / "bench" / "results" / "content_free.json").read_text())
    saved.pop("run", None)
    write_json(tmp_path / "one.json", saved)
    run = json.loads((tmp_path / "one.json").read_text())["run"]
    assert run["command"] == "python bench/experiments/content_free.py --json x.json"
    assert render_docs.script_of(tmp_path / "one.json", {"run": run}) == REPO / "bench" / "experiments" / "content_free.py"
    script = tmp_path / "timing.py"
    script.write_text("def render(document):\n    return f\"{document['seconds']} s\"\n")
    for index, seconds in enumerate([3, 5]):
        (tmp_path / f"run{index}.json").write_text(json.dumps({"seconds": seconds, "run": {
            "command": f"python {script} --json run{index}.json", "date": "2026-11-30", "machine": "vm"}}))
    table = render_docs.render_saved(str(tmp_path / "run*.json")).splitlines()
    assert table == ["| command | result |", "|---|---|", f"| `python {script} --json run0.json` (2026-11-30, vm) | 3 s |",
                     f"| `python {script} --json run1.json` (2026-11-30, vm) | 5 s |"]


def test_a_part_names_a_second_render_of_the_same_saved_run(render_docs):
    """README's results table is make_results.py's `render_summary` of the run whose full section is in RESULTS.md:
    the same numbers, read from one file."""
    summary = render_docs.render_saved("bench/results/make_results.json#summary")
    section = render_docs.render_saved("bench/results/make_results.json")
    assert summary != section and "| sentiment | sentiment, margin | 3.80 |" in summary
    assert "| default | transplanted α=1 | 1.000 ± 0.000 | 13.285 ± 0.353 |" in section  # the same run's 13.28
