"""`contrans compare` / `contrans table` on tiny models: rows, columns, controls, resumption."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lm_eval_contrans.artifact import load_steering
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.compare import ComparePlan, run_compare
from lm_eval_contrans.experiments.report import Row, markdown_table, rows_from_folder

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def grid(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    plan = ComparePlan(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment",
                       tasks=["contrans_sentiment", "contrans_facts"], alphas=[1.0, 40.0],
                       instruct=str(tiny_llama_dir), out=tmp_path_factory.mktemp("compare"), limit=4, batch_size=4,
                       device="cpu", random_directions=1)  # one random row per alpha; the band: test_paired.py
    return plan, run_compare(plan)


def test_rows_and_columns(grid):
    plan, rows = grid
    assert [row.name for row in rows] == [
        "base target", "+ ConTrans α=1", "+ ConTrans α=40", "random vector α=1", "target's own vector α=1",
        "random vector α=40", "target's own vector α=40", "prompt baseline", "source", f"instruct ({plan.instruct})"]
    table = (plan.out / "table.md").read_text().split("\n\n")[0]  # the main table; the paired tests follow
    header = table.splitlines()[0]
    # each task's main metric is the first of its YAML's metric_list: contrans_facts lists acc, then acc_norm
    assert "contrans_facts (acc) | contrans_sentiment (acc_norm) | contrans_sentiment (margin)" in header
    assert "heldout_r2" in header and "cos_to_own" in header
    assert len(table.splitlines()) == 2 + len(rows)
    assert "| source | instruction-tuned source | " in table  # the kinds in words, the instruction-tuned rows named
    assert f"| instruct ({plan.instruct}) | instruction-tuned target | " in table
    assert (plan.out / "gap_closed.csv").read_text().startswith("task,metric,transplant,alpha,reference,")
    csv_lines = (plan.out / "table.csv").read_text().splitlines()
    paired = ("vs_base,vs_base_low,vs_base_high,vs_base_p,vs_band,vs_band_low,vs_band_high,vs_band_p,in_band,band_low,"
              "band_high").split(",")
    assert csv_lines[0] == ",".join(["model", "kind", "kind_label", "alpha"] + [
        f"{column}{suffix}" for column in ("contrans_facts/acc", "contrans_sentiment/acc_norm", "contrans_sentiment/margin")
        for suffix in ("", "_stderr", *(f"/{name}" for name in paired))] + ["cos_to_own", "heldout_r2"])
    assert len(csv_lines) == 1 + len(rows)
    png = (plan.out / "plots" / "contrans_sentiment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    margins = {row.name: row.results["contrans_sentiment"]["margin,none"] for row in rows}
    assert margins["+ ConTrans α=40"] != margins["base target"]


def test_random_control_has_the_transplant_norm_and_own_vector_is_the_targets(grid):
    plan, rows = grid
    steering = {row.name: load_steering(plan.out / row.artifact)[0] for row in rows if row.artifact}
    transplant, random, own = (steering[f"{kind} α=40"] for kind in ("+ ConTrans", "random vector", "target's own vector"))
    assert steering["+ ConTrans α=1"].vector.equal(transplant.vector)
    assert random.vector.norm() == pytest.approx(float(transplant.vector.norm()), rel=1e-5)
    assert abs(torch.nn.functional.cosine_similarity(random.vector, transplant.vector, dim=0)) < 0.5
    assert own.vector.shape == transplant.vector.shape and not torch.equal(own.vector, transplant.vector)
    # the controls are directions that say what they are, not copies of the transplant with its map and R²
    assert isinstance(random, Direction) and isinstance(own, Direction) and not hasattr(random, "heldout_r2")
    assert random.origin["control"] == "random" and own.origin["control"] == "target's own vector"
    assert (random.block, random.alpha_unit, own.block) == (transplant.target_layer, transplant.alpha_unit, transplant.target_layer)


def test_the_base_row_is_the_unsteered_target(grid):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.hf.scoring import FastScoringHFLM

    plan, rows = grid
    plain = FastScoringHFLM(pretrained=plan.target, device="cpu", batch_size=4)
    expected = lm_eval.simple_evaluate(model=plain, tasks=["contrans_sentiment"], limit=4, task_manager=TaskManager(),
                                       bootstrap_iters=1000)["results"]["contrans_sentiment"]
    base = rows[0].results["contrans_sentiment"]
    assert rows[0].name == "base target"
    assert base["acc_norm,none"] == expected["acc_norm,none"]
    assert base["margin,none"] == pytest.approx(expected["margin,none"], abs=1e-5)


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


def test_a_rerun_with_other_settings_runs_again_instead_of_mixing(grid, monkeypatch):
    import dataclasses

    import lm_eval

    plan, rows = grid
    calls = []
    real = lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("limit"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    fewer = dataclasses.replace(plan, limit=2, controls=False, instruct=None, alphas=[1.0])
    again = run_compare(fewer)
    assert [row.name for row in again] == ["base target", "+ ConTrans α=1", "source"]
    assert calls == [2, 2, 2]  # every row ran again with the new limit
    # a table of the folder holds the new grid's rows only
    assert [row.name for row in rows_from_folder(plan.out)] == ["base target", "+ ConTrans α=1", "source"]
    other_layer = dataclasses.replace(fewer, build_options={"target_layer": 1})
    run_compare(other_layer)
    artifacts = sorted(path.name for path in (plan.out / "artifacts").glob("sentiment-*.safetensors"))
    assert len(artifacts) == 2  # another build setting, another transplant; not the old file
    assert rows_from_folder(plan.out)[1].results != again[1].results
    run_compare(plan)  # back to the fixture's grid for the other tests


def test_the_prompt_baseline_puts_the_instruction_before_every_context(tiny_gpt2_dir):
    from lm_eval.api.instance import Instance

    from lm_eval_contrans.experiments.prompt_baseline import PromptBaselineLM
    from lm_eval_contrans.hf.scoring import FastScoringHFLM

    pairs = [("The hotel room was", " clean"), ("We walked along the river", " slowly")]
    prefix = "Answer kindly.\n\n"

    def scores(lm, contexts):
        requests = [Instance("loglikelihood", {}, (context, pair[1]), index)
                    for index, (context, pair) in enumerate(zip(contexts, pairs))]
        return [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    plain = FastScoringHFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)
    baseline = PromptBaselineLM(prefix=prefix, pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)
    contexts = [context for context, _ in pairs]
    assert scores(baseline, contexts) == pytest.approx(scores(plain, [prefix + c for c in contexts]), abs=1e-5)
    assert scores(baseline, contexts) != pytest.approx(scores(plain, contexts), abs=1e-3)


def test_lm_evals_evaluation_options_reach_every_row_and_a_chat_model_reads_the_instruction_as_a_system_turn(
        tiny_llama_dir, tiny_gpt2_dir, task_dir, small_inputs, tmp_path, monkeypatch):
    """`contrans compare --apply_chat_template --num_fewshot 1 --system_instruction ...` asks every row what lm_eval
    would ask it. Under a chat template the prompt baseline's instruction joins the system instruction: as a prefix
    it would stand before the template's own opening, outside any turn."""
    import lm_eval
    import yaml

    from conftest import with_chat_template

    source, target = (with_chat_template(folder, tmp_path / name) for folder, name in
                      ((tiny_llama_dir, "chat-source"), (tiny_gpt2_dir, "chat-target")))
    concept, anchors = small_inputs
    with_instruction = tmp_path / "warm.yaml"
    with_instruction.write_text(yaml.safe_dump({"name": "warm", "instruction": "Write warmly.", "pairs": [
        json.loads(line) for line in open(concept)]}))
    prompts, real = {}, lm_eval.simple_evaluate

    def recording(*args, **kwargs):  # every row's prompts, as lm-eval built them
        output = real(*args, **{**kwargs, "log_samples": True})
        prompts[len(prompts)] = (kwargs, [sample["arguments"][0][0] for sample in output["samples"]["contrans_tiny_choice"]])
        return output

    monkeypatch.setattr(lm_eval, "simple_evaluate", recording)
    plan = ComparePlan(source=str(source), target=str(target), concept=str(with_instruction), tasks=["contrans_tiny_choice"],
                       alphas=[60.0], out=tmp_path / "compare", limit=2, batch_size=4, device="cpu",
                       include_path=[str(task_dir)], build_options={"anchors": anchors}, random_directions=1,
                       evaluate={"apply_chat_template": True, "num_fewshot": 1, "system_instruction": "Be brief."})
    rows = run_compare(plan)
    names = [row.name for row in rows]
    assert names == ["base target", "+ ConTrans α=60", "random vector α=60", "target's own vector α=60", "prompt baseline", "source"]
    by_row = dict(zip(names, prompts.values()))
    for name, (options, texts) in by_row.items():
        assert {key: options[key] for key in ("apply_chat_template", "num_fewshot")} == {"apply_chat_template": True,
                                                                                      "num_fewshot": 1}, name
        # a chat-formatted prompt with the few-shot example as an earlier user turn
        assert all(text.count("[user]") == 2 and text.rstrip().endswith("[assistant]") for text in texts), name
    assert all(text.startswith("[system] Be brief.\n[user]") for text in by_row["base target"][1])
    assert all(text.startswith("[system] Be brief.\n\nWrite warmly.\n[user]") for text in by_row["prompt baseline"][1])
    plain_target = dataclasses.replace(plan, target=str(tiny_gpt2_dir), out=tmp_path / "other")
    with pytest.raises(ConTransError, match=f"^apply_chat_template: the target {tiny_gpt2_dir} has no chat template"):
        run_compare(plain_target)  # before any row runs, or the build
    assert not (tmp_path / "other").exists()
    calls = len(prompts)
    run_compare(plan)
    assert len(prompts) == calls  # the same options: every row read back
    run_compare(dataclasses.replace(plan, evaluate={}, controls=False))
    assert len(prompts) == calls + 3  # other options: base, transplant and source run again


def test_table_of_lm_eval_output_from_model_contrans(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path):
    """`contrans table` on what `lm_eval --model contrans --output_path` writes: the row is a ConTrans row
    with its alpha and held-out R^2, and the main metric is the task's first."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept=concept, anchors=anchors, alpha=3,
                    device="cpu", batch_size=4)
    tracker = EvaluationTracker(output_path=str(tmp_path / "out"))
    output = lm_eval.simple_evaluate(model=lm, tasks=["contrans_facts"], limit=3, evaluation_tracker=tracker)
    tracker.save_results_aggregated(results=output, samples=None)
    rows = rows_from_folder(tmp_path / "out")
    assert len(rows) == 1 and rows[0].kind == "contrans" and rows[0].alpha == 3.0
    assert rows[0].diagnostics["heldout_r2"] == lm.transplant.heldout_r2
    assert rows[0].main_metrics == {"contrans_facts": "acc"}
    acc = output["results"]["contrans_facts"]["acc,none"]
    assert markdown_table(rows).splitlines()[0] == "| model | kind | contrans_facts (acc) | heldout_r2 |"
    assert f"| {acc:.3f} ± " in markdown_table(rows).splitlines()[2]


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


def test_the_main_metric_is_the_first_in_the_tasks_yaml():
    from lm_eval_contrans.experiments.report import main_metrics_of

    results = {"t": {"acc,none": 0.5, "acc_norm,none": 0.75, "exact_match,none": 0.25}}
    declared = main_metrics_of({"t": {"metric_list": [{"metric": "exact_match"}, {"metric": "acc"}]}})
    assert declared == {"t": "exact_match"}
    assert markdown_table([Row("a", results, main_metrics=declared)]).splitlines()[0] == "| model | t (exact_match) |"
    # without the task's config (an old results file): the first common metric present
    assert markdown_table([Row("a", results)]).splitlines()[0] == "| model | t (acc_norm) |"
