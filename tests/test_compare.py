"""`contrans compare` / `contrans table` on tiny models: rows, columns, controls, resumption."""

from __future__ import annotations

import json

import pytest
import torch

from lm_eval_contrans.artifact import load_transplant
from lm_eval_contrans.compare import ComparePlan, run_compare
from lm_eval_contrans.report import Row, markdown_table, rows_from_folder

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def grid(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    plan = ComparePlan(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment",
                       tasks=["contrans_sentiment"], alphas=[1.0, 40.0], instruct=str(tiny_llama_dir),
                       out=tmp_path_factory.mktemp("compare"), limit=4, batch_size=4, device="cpu")
    return plan, run_compare(plan)


def test_rows_and_columns(grid):
    plan, rows = grid
    assert [row.name for row in rows] == [
        "base target", "+ ConTrans α=1", "+ ConTrans α=40", "random vector α=1", "target's own vector α=1",
        "random vector α=40", "target's own vector α=40", "prompt baseline", "source", f"instruct ({plan.instruct})"]
    table = (plan.out / "table.md").read_text()
    header = table.splitlines()[0]
    assert "contrans_sentiment (acc_norm)" in header and "heldout_r2" in header and "cos_to_own" in header
    assert len(table.splitlines()) == 2 + len(rows)
    csv_lines = (plan.out / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,kind,alpha,contrans_sentiment/metric,contrans_sentiment/value")
    assert len(csv_lines) == 1 + len(rows)
    png = (plan.out / "plots" / "contrans_sentiment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for row in rows:
        assert 0.0 <= row.results["contrans_sentiment"]["acc_norm,none"] <= 1.0
    margins = {row.name: row.results["contrans_sentiment"]["margin,none"] for row in rows}
    assert margins["+ ConTrans α=40"] != margins["base target"]


def test_random_control_has_the_transplant_norm_and_own_vector_is_the_targets(grid):
    plan, _ = grid
    artifacts = plan.out / "artifacts"
    transplant = load_transplant(artifacts / "sentiment.safetensors")
    random = load_transplant(artifacts / "random.safetensors")
    own = load_transplant(artifacts / "own.safetensors")
    assert random.vector.norm() == pytest.approx(float(transplant.vector.norm()), rel=1e-5)
    assert abs(torch.nn.functional.cosine_similarity(random.vector, transplant.vector, dim=0)) < 0.5
    assert own.vector.shape == transplant.vector.shape and not torch.equal(own.vector, transplant.vector)
    assert random.extra["control"].startswith("random") and own.extra["control"] == "target's own vector"


def test_a_finished_grid_is_not_run_again_and_a_missing_row_is(grid, monkeypatch):
    import shutil

    import lm_eval

    plan, rows = grid
    calls = []
    real = lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    again = run_compare(plan)
    assert calls == [] and [row.to_json() for row in again] == [row.to_json() for row in rows]
    shutil.rmtree(plan.out / "rows" / "source")
    run_compare(plan)
    assert calls == [1]


def test_table_of_a_compare_folder_keeps_the_row_order(grid):
    plan, rows = grid
    assert [row.name for row in rows_from_folder(plan.out)] == [row.name for row in rows]


def test_table_reads_lm_eval_output_folders(tmp_path):
    folder = tmp_path / "run1" / "model"
    folder.mkdir(parents=True)
    (folder / "results_2026-11-26T00-00-00.json").write_text(json.dumps({
        "config": {"model": "hf", "model_args": "pretrained=some/model"},
        "results": {"contrans_honesty_mc2": {"acc,none": 0.41, "acc_stderr,none": 0.02}}}))
    rows = rows_from_folder(tmp_path / "run1")
    assert [row.name for row in rows] == ["hf(pretrained=some/model)"]
    assert "| hf(pretrained=some/model) | 0.410 ± 0.020 |" in markdown_table(rows)


def test_markdown_marks_missing_scores():
    rows = [Row("a", {"t1": {"acc,none": 0.5}}), Row("b", {"t2": {"acc,none": 0.25}})]
    assert markdown_table(rows).splitlines()[2] == "| a | 0.500 | — |"
