"""The experiment grid and the experiments' data folder, on tiny models and tiny tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment_data import DATA_ENV, data_folder, task_metadata
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow


@pytest.fixture(scope="module")
def transplant(tiny_llama_dir, tiny_gpt2_dir, small_inputs):
    from lm_eval_contrans.pipeline import build_transplant

    concept, anchors = small_inputs
    return build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors, device="cpu")


def counting_evaluations(monkeypatch) -> list:
    import lm_eval

    calls, real = [], lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        calls.append((tuple(kwargs["tasks"]), kwargs["limit"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    return calls


def test_rows_are_reused_only_under_the_same_settings(tiny_gpt2_dir, transplant, task_dir, tmp_path, monkeypatch):
    calls = counting_evaluations(monkeypatch)
    rows = [GridRow("base", "base", str(tiny_gpt2_dir), alpha=0.0),
            GridRow("steered", "contrans", str(tiny_gpt2_dir), transplant, 60.0)]

    grids = []

    def run(limit, tasks=("contrans_tiny_choice",), folder=tmp_path / "grid"):
        settings = EvalSettings(tasks=list(tasks), limit=limit, batch_size=4, device="cpu", include_path=[str(task_dir)])
        grids.append(Grid(folder, settings))
        return grids[-1].run(rows)

    first = run(3)
    assert calls == [(("contrans_tiny_choice",), 3)] * 2
    assert sorted(grids[-1].seconds) == ["base", "steered"] and grids[-1].reused == []
    assert run(3) == first and len(calls) == 2  # resumed: nothing evaluated again
    assert grids[-1].seconds == {} and grids[-1].reused == ["base", "steered"]  # a time reported is not theirs
    (tmp_path / "grid" / "rows" / "steered" / "row.json").unlink()
    run(3)
    assert len(calls) == 3  # only the missing row
    assert list(grids[-1].seconds) == ["steered"] and grids[-1].reused == ["base"]
    run(2)
    assert calls[3:] == [(("contrans_tiny_choice",), 2)] * 2  # another limit: both rows again
    stored = json.loads((tmp_path / "grid" / "rows" / "base" / "row.json").read_text())
    assert stored["artifact"] is None and len(stored["key"]) == 24
    assert json.loads((tmp_path / "grid" / "rows" / "steered" / "row.json").read_text())["artifact"].startswith("artifacts/")
    run(2, tasks=("contrans_tiny_choice", "contrans_tiny_generate"))
    assert calls[-1] == (("contrans_tiny_choice", "contrans_tiny_generate"), 2)


def test_the_steered_rows_share_one_target_load_and_steer_as_asked(tiny_gpt2_dir, transplant, tmp_path, monkeypatch):
    import lm_eval_contrans.hf.lm_eval_model as adapter

    loads = []
    real_init = adapter.ConTransLM.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(kwargs.get("target"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(adapter.ConTransLM, "__init__", counting_init)
    settings = EvalSettings(tasks=["contrans_sentiment"], limit=4, batch_size=4, device="cpu", per_document=("margin",))
    rows = Grid(tmp_path / "grid", settings).run([
        GridRow("base", "base", str(tiny_gpt2_dir), alpha=0.0),
        GridRow("plus", "contrans", str(tiny_gpt2_dir), transplant, 60.0),
        GridRow("minus", "contrans", str(tiny_gpt2_dir), transplant, -60.0),
        GridRow("both", "contrans", str(tiny_gpt2_dir), [transplant, transplant], (30.0, 30.0)),
    ])
    assert len(loads) == 1
    margins = {row.name: row.per_document["contrans_sentiment"]["margin"] for row in rows}
    assert len(margins["base"]) == 4
    assert margins["plus"] != margins["base"] and margins["minus"] != margins["plus"]
    assert margins["both"] == pytest.approx(margins["plus"], abs=1e-3)  # two halves at once are the whole push


def test_row_names_must_differ(tiny_gpt2_dir, tmp_path):
    grid = Grid(tmp_path, EvalSettings(tasks=["contrans_facts"]))
    with pytest.raises(ConTransError, match="^rows: row names must differ"):
        grid.run([GridRow("a", "base", str(tiny_gpt2_dir)), GridRow("a", "source", str(tiny_gpt2_dir))])


def test_the_data_folder_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(ConTransError, match=f"^data: name the data folder with --data <folder> or {DATA_ENV}="):
        data_folder(None)
    with pytest.raises(ConTransError, match="lacks truthfulqa/truthfulqa_mc_dev.jsonl, toxigen, emotions"):
        data_folder(tmp_path)
    for relative in ("truthfulqa/truthfulqa_mc_dev.jsonl", "emotions/scenarios_dev.json"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    (tmp_path / "toxigen").mkdir()
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_folder(None) == tmp_path
    assert task_metadata(data_folder(None))["emotion_data"] == str(tmp_path / "emotions" / "scenarios_dev.json")


def test_render_prints_a_saved_run_and_names_what_is_missing(tmp_path, capsys):
    import argparse

    from experiment_data import add_json_argument, printed_from_saved, write_json

    parser = argparse.ArgumentParser()
    add_json_argument(parser, render=True)
    render = lambda document: f"{len(document['rows'])} rows"  # noqa: E731
    assert not printed_from_saved(parser.parse_args([]), render)  # no --render: the script runs
    with pytest.raises(ConTransError, match="^render: --render prints from a saved run"):
        printed_from_saved(parser.parse_args(["--render", "--json", str(tmp_path / "none.json")]), render)
    write_json(tmp_path / "saved.json", {"rows": [1, 2, 3]})
    assert printed_from_saved(parser.parse_args(["--render", "--json", str(tmp_path / "saved.json")]), render)
    assert capsys.readouterr().out == "3 rows\n"


def test_the_shuffled_label_control_keeps_every_text_and_pair_and_swaps_about_half():
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import shuffled_labels

    concept = load_concept_set("sentiment")
    shuffled = shuffled_labels(concept, seed=0)
    pairs = list(zip(concept.positives, concept.negatives))
    swapped = [(p, n) == (n0, p0) for (p, n), (p0, n0) in zip(zip(shuffled.positives, shuffled.negatives), pairs)]
    kept = [(p, n) == (p0, n0) for (p, n), (p0, n0) in zip(zip(shuffled.positives, shuffled.negatives), pairs)]
    assert all(s or k for s, k in zip(swapped, kept))  # each pair either as it was or with its sides swapped
    assert 0.3 * len(pairs) < sum(swapped) < 0.7 * len(pairs)
    assert shuffled.name == "sentiment-shuffled" and shuffled.pairs_hash != concept.pairs_hash
    assert shuffled_labels(concept, seed=0) == shuffled and shuffled_labels(concept, seed=1) != shuffled


def test_paired_token_states_are_the_rows_the_map_was_fitted_on(transplant, small_inputs):
    import torch

    from lm_eval_contrans.reformulate import fit_linear_map
    from lm_eval_contrans.anchors import load_anchor_texts
    from states import paired_token_states

    texts, _ = load_anchor_texts(small_inputs[1])
    source, target, text_of_row = paired_token_states(transplant, texts)
    assert transplant.anchor_tokens == "dense" and len(source) == len(target) == len(text_of_row) > len(texts)
    assert text_of_row.unique().tolist() == list(range(len(texts)))
    refitted = fit_linear_map(source, target, center=transplant.center, groups=text_of_row)
    assert torch.allclose(refitted.weight, transplant.map_weight, atol=1e-4)
    assert refitted.heldout_r2 == pytest.approx(transplant.heldout_r2, abs=1e-6)


def test_emotion_steering_cells_and_counts_read_a_grid_runs_accuracies():
    from types import SimpleNamespace

    import emotion_steering as emotions

    rows = [SimpleNamespace(name="a", results={"contrans_emotion_fear": {"acc,none": 0.85, "acc_stderr,none": 0.05, "alias": "x"}}),
            SimpleNamespace(name="b", results={"contrans_emotion_fear": {"acc,none": 0.5, "acc_stderr,none": "N/A"},
                                               "contrans_emotion_anger": {"acc,none": 0.8}})]
    scores = emotions.accuracies(rows)
    assert scores["a"]["contrans_emotion_fear"] == {"acc,none": 0.85, "acc_stderr,none": 0.05}
    assert emotions.cell(scores, "a", "contrans_emotion_fear") == "0.85 ± 0.05"
    assert emotions.cell(scores, "b", "contrans_emotion_fear") == "0.50"
    assert emotions.steered(scores, {"fear": "a", "anger": "b"}) == 2 and emotions.steered(scores, {"fear": "b"}) == 0
    settings = emotions.settings(Path("/data"), 40, 8)
    assert settings.limit_of("contrans_emotion_sadness") == 40 and settings.limit_of("contrans_facts") is None
    assert settings.task_metadata["emotion_data"] == str(Path("/data") / "emotions" / "scenarios_dev.json")


def test_default_alpha_pairs_only_documents_scored_on_both_sides(tmp_path):
    """lm-eval's MC2 is NaN where every answer's probability underflows; the paired table leaves those
    documents out, says how many, and still renders from the saved run."""
    import subprocess
    import sys

    from experiment_data import REPOSITORY

    nan = float("nan")
    document = {"concepts": ["honesty"], "alphas": [5.0], "randoms": ["random, equal norm"],
                "base": {"contrans_honesty_mc2": [0.4, 0.5, 0.6], "contrans_facts": [1.0, 0.0, 1.0]},
                "steered": {"honesty / transplanted / 5 / contrans_honesty_mc2": [0.5, 0.6, 0.7],
                            "honesty / transplanted / 5 / contrans_facts": [1.0, 0.0, 0.0],
                            "honesty / random, equal norm / 5 / contrans_honesty_mc2": [0.4, nan, 0.8],
                            "honesty / random, equal norm / 5 / contrans_facts": [0.0, 0.0, 0.0]}}
    (tmp_path / "saved.json").write_text(json.dumps(document))
    printed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "experiments" / "default_alpha.py"), "--render",
                              "--json", str(tmp_path / "saved.json")], capture_output=True, text=True, check=True).stdout
    assert "| honesty | transplanted | 5 | contrans_honesty_mc2 acc | 0.500 | 0.600 | +0.100 ± 0.000 | 3 |" in printed
    assert "| honesty | random, equal norm | 5 | contrans_honesty_mc2 acc | 0.500 | 0.600 | +0.100 ± 0.100 | 2 (1 NaN left out) |" in printed


def test_map_levers_choose_on_the_selection_concepts_and_carry_both_the_concept_and_its_shuffled_control(transplant):
    """A lever's setting is picked on sentiment, honesty and toxicity only; its steering rows carry the
    emotion's pairs and the shuffled-label pairs through the lever, and share one random direction."""
    import torch

    from lm_eval_contrans.concepts import load_concept_set
    import map_levers
    from emotion_steering import EMOTIONS

    good_on_emotions = {**{c: 0.1 for c in map_levers.SELECTION}, **{e: 0.9 for e in EMOTIONS}}
    good_on_selection = {**{c: 0.3 for c in map_levers.SELECTION}, **{e: 0.0 for e in EMOTIONS}}
    assert map_levers.choose({"a": good_on_emotions, "b": good_on_selection}) == "b"

    pairs = {e: list(zip(load_concept_set(e).positives, load_concept_set(e).negatives)) for e in EMOTIONS}
    texts = sorted({text for p in pairs.values() for pair in p for text in pair})
    generator = torch.Generator().manual_seed(0)
    text_states = {role: {t: torch.randn(size, generator=generator) for t in texts}
                   for role, size in (("source", transplant.source_hidden_size), ("target", transplant.target_hidden_size))}
    states = map_levers.LeverStates({e: transplant for e in EMOTIONS}, pairs, text_states, None, None, None, {}, {})
    projection = torch.randn(transplant.source_hidden_size, transplant.target_hidden_size, generator=generator, dtype=torch.float64)
    rows = map_levers.steering_rows(states, "target", {"lever": lambda emotion, vector: vector @ projection})
    by_name = {row.name: row for row in rows}
    assert len(rows) == 1 + len(EMOTIONS) * 4 and by_name["base"].kind == "base"
    for emotion in EMOTIONS:
        concept, shuffled = by_name[f"lever|{emotion}|transplanted"], by_name[f"lever|{emotion}|shuffled"]
        expected = (states.source_vector(pairs[emotion]) @ projection).float()
        assert torch.allclose(concept.transplant.vector, expected, atol=1e-5)
        assert torch.allclose(shuffled.transplant.vector, (states.source_vector(states.shuffled_pairs(emotion)) @ projection).float(),
                              atol=1e-5)
        assert not torch.allclose(shuffled.transplant.vector, concept.transplant.vector)
        assert concept.tasks == (f"contrans_emotion_{emotion}", "contrans_facts") and shuffled.tasks == (f"contrans_emotion_{emotion}",)
        assert by_name[f"default|{emotion}|transplanted"].transplant is transplant
    randoms = [by_name[f"{e}|random"].transplant.vector for e in EMOTIONS]
    assert all(torch.equal(randoms[0], vector) for vector in randoms)
    twice = {row.name: row for row in map_levers.steering_rows(states, "target", {"lever": lambda emotion, vector: vector @ projection},
                                                              alphas=(1.0, 2.0))}
    assert len(twice) == 1 + len(EMOTIONS) * 8 and set(by_name) < set(twice)  # alpha 1 rows keep their names: reused
    assert twice["lever|fear|shuffled|α=2"].alpha == 2.0 and twice["lever|fear|shuffled"].alpha == 1.0
    assert torch.equal(twice["lever|fear|shuffled|α=2"].transplant.vector, twice["lever|fear|shuffled"].transplant.vector)


def test_a_row_is_above_its_controls_only_by_more_than_two_standard_errors():
    from emotion_steering import above_controls

    scores = {name: {"task": {"acc,none": value}} for name, value in
              {"lever": 0.93, "random": 0.0, "shuffled": 0.82, "same": 0.93, "all": 1.0}.items()}
    assert above_controls(scores, "lever", ["random"], "task", 40)
    assert not above_controls(scores, "lever", ["random", "shuffled"], "task", 40)  # 0.11 apart, 2 s.e. = 0.15
    assert above_controls(scores, "lever", ["random", "shuffled"], "task", 400)  # 2 s.e. = 0.05
    assert not above_controls(scores, "all", ["all"], "task", 40) and not above_controls(scores, "lever", ["same"], "task", 10_000)


def lever_states_of_random_texts(transplant, seed: int = 0):
    """LeverStates over every shipped concept's texts, with random states, source vectors and own vectors."""
    import dataclasses

    import torch

    from lm_eval_contrans.concepts import load_concept_set
    import map_levers

    generator = torch.Generator().manual_seed(seed)
    sizes = {"source": transplant.source_hidden_size, "target": transplant.target_hidden_size}
    pairs = {c: list(zip(load_concept_set(c).positives, load_concept_set(c).negatives)) for c in map_levers.CONCEPTS}
    texts = sorted({text for p in pairs.values() for pair in p for text in pair})
    text_states = {role: {t: torch.randn(size, generator=generator) for t in texts} for role, size in sizes.items()}
    transplants = {c: dataclasses.replace(transplant, source_vector=torch.randn(sizes["source"], generator=generator))
                   for c in map_levers.CONCEPTS}
    own = {c: torch.randn(sizes["target"], generator=generator) for c in map_levers.CONCEPTS}
    anchors = torch.randn(300, sizes["source"], generator=generator)
    anchor_target = anchors @ torch.randn(sizes["source"], sizes["target"], generator=generator) + 0.1 * torch.randn(300, sizes["target"],
                                                                                                                      generator=generator)
    return map_levers.LeverStates(transplants, pairs, text_states, anchors, anchor_target, None, own, {})


def test_contrast_rows_teach_the_map_and_an_emotion_s_map_is_chosen_without_it(transplant):
    """lambda 0 is the centred least-squares map; a larger lambda fits the contrast rows more closely;
    an emotion's teaching never holds a text of its set, and what is chosen for it does not move when
    everything about it (its texts' states, its vectors) is redrawn."""
    import dataclasses

    import torch

    import contrast_rows
    from emotion_steering import EMOTIONS
    from map_levers import SELECTION

    states = lever_states_of_random_texts(transplant)
    fit = contrast_rows.ContrastFit(states.anchor_source, states.anchor_target)
    x, y = states.anchor_source.double(), states.anchor_target.double()
    least_squares = torch.linalg.lstsq(x - x.mean(0), y - y.mean(0)).solution
    assert torch.allclose(fit.weight(), least_squares, atol=1e-6)

    taught = contrast_rows.teaching_pairs("sadness", contrast_rows.WITHIN, states.pairs)
    own_texts = {text for pair in states.pairs["sadness"] for text in pair}
    assert taught and not own_texts & {text for pair in taught for text in pair}
    assert set(contrast_rows.teaching_pairs("sadness", contrast_rows.ACROSS, states.pairs)) == {
        pair for name in SELECTION for pair in states.pairs[name]}
    differences = {role: states.differences(role, taught) for role in ("source", "target")}
    misfit = [float((differences["source"] @ fit.taught(states, "sadness", contrast_rows.WITHIN, fraction) - differences["target"]).norm())
              for fraction in (0.0, 0.01, 1.0)]
    assert misfit[0] > misfit[1] > misfit[2]

    chosen, inner = contrast_rows.choose_for_emotions(states, fit)
    assert set(chosen) == set(EMOTIONS) and all(set(scores) == set(inner["fear"]) for scores in inner.values())
    redrawn = lever_states_of_random_texts(transplant, seed=1)
    fear_texts = {text for pair in states.pairs["fear"] for text in pair}
    mixed = dataclasses.replace(states, text_states={role: {t: (redrawn.text_states[role][t] if t in fear_texts else state)
                                                            for t, state in by_text.items()} for role, by_text in states.text_states.items()},
                                transplants={**states.transplants, "fear": redrawn.transplants["fear"]}, own={**states.own, "fear": redrawn.own["fear"]})
    chosen_again, inner_again = contrast_rows.choose_for_emotions(mixed, fit)
    assert inner_again["fear"] == pytest.approx(inner["fear"], abs=1e-12) and chosen_again["fear"] == chosen["fear"]
    assert inner_again["sadness"] != pytest.approx(inner["sadness"], abs=1e-6)  # the others' choices do read fear's vectors


def test_the_anchor_space_rules_rebuild_a_vector_from_anchor_states():
    """Sparse coding with as many anchors as dimensions rebuilds any vector exactly, so through a linear
    relation between the two sides it gives that relation's image; nearest weights anchors by cosine."""
    import importlib.util

    import torch

    from experiment_data import REPOSITORY

    spec = importlib.util.spec_from_file_location("anchor_space", REPOSITORY / "bench" / "experiments" / "anchor_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    relation = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    space = module.AnchorSpace(source, source @ relation)
    vector = torch.randn(6, generator=generator, dtype=torch.float64)
    rebuilt = space.sparse(vector, sizes=(1, 6))
    assert torch.allclose(rebuilt[6], vector @ relation, atol=1e-4)
    assert not torch.allclose(rebuilt[1], vector @ relation, atol=1e-2)
    aligned = space.nearest(space.source[7].double(), sizes=(1,))[1]
    assert torch.allclose(aligned, space.target[7].double(), atol=1e-5)  # the anchor itself, cosine 1


def test_an_experiments_arguments_run_it_or_print_its_saved_run(tmp_path, monkeypatch, capsys):
    import emotion_steering as emotions
    from experiment_data import write_json

    render = lambda document: f"{document['rows']} rows"  # noqa: E731
    more = lambda parser: parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])  # noqa: E731
    monkeypatch.setattr("sys.argv", ["lever.py", "--limit", "5", "--alphas", "1", "2"])
    args = emotions.parse_arguments("A lever.\n\nMore.", render, emotions=False, more=more)
    assert (args.limit, args.alphas, args.batch_size, hasattr(args, "emotions")) == (5, [1.0, 2.0], 8, False)
    write_json(tmp_path / "saved.json", {"rows": 3})
    monkeypatch.setattr("sys.argv", ["lever.py", "--render", "--json", str(tmp_path / "saved.json")])
    assert emotions.parse_arguments("A lever.", render) is None
    assert capsys.readouterr().out == "3 rows\n"
    watch = emotions.Stopwatch()
    watch.log("recorded")
    assert capsys.readouterr().out.endswith(" s] recorded\n") and 0 <= watch.seconds < 60


def test_a_saved_run_names_its_commit_and_whether_the_code_differed_from_it(tmp_path, monkeypatch):
    import subprocess

    import experiment_data as data

    def git(*arguments: str) -> None:
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *arguments], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "lm_eval_contrans").mkdir()
    (tmp_path / "lm_eval_contrans" / "module.py").write_text("x = 1\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(data, "REPOSITORY", tmp_path)
    clean = data.code_commit()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "bench" / "results" / "run.json").write_text("{}")  # a run's own output is not code
    assert data.code_commit() == clean
    (tmp_path / "lm_eval_contrans" / "module.py").write_text("x = 2\n")
    assert data.code_commit() == clean + "-dirty"


def test_a_saved_run_records_the_commit_its_run_started_with_and_an_import_starts_no_process(tmp_path, monkeypatch):
    """Importing the experiments' modules (or the benchmarks' helpers) runs no git; a script's parser
    (`add_json_argument`) takes the commit, and a file written later records that one."""
    import argparse
    import subprocess
    import sys

    import experiment_data as data

    probe = ("import sys\n"
             "def refuse(event, args):\n"
             "    if event in {'subprocess.Popen', 'os.system', 'os.posix_spawn', 'os.exec', 'os.spawn', 'os.fork'}:\n"
             "        raise RuntimeError(f'a process at import: {event} {args}')\n"
             "sys.addaudithook(refuse)\n"
             "import {}\n")
    bench = data.REPOSITORY / "bench"
    for folder, modules in (("experiments", "experiment_data, emotion_steering, states, map_levers, contrast_rows"),
                            ("perf", "_timing")):
        subprocess.run([sys.executable, "-c", probe.replace("{}", modules)], cwd=bench / folder, check=True)
    data.commit_at_start.cache_clear()
    monkeypatch.setattr(data, "code_commit", lambda: "started")
    try:
        data.add_json_argument(argparse.ArgumentParser())
        monkeypatch.setattr(data, "code_commit", lambda: "edited since")
        data.write_json(tmp_path / "run.json", {})
    finally:
        data.commit_at_start.cache_clear()
    assert json.loads((tmp_path / "run.json").read_text())["run"]["commit"] == "started"


def test_the_alpha_that_reaches_a_kl_budget_is_read_off_the_measured_curve():
    """kl_alpha.py's unit: log-log interpolation between the measured alphas (exact for a power law),
    clamped to the measured range rather than extrapolated."""
    import importlib.util

    from experiment_data import REPOSITORY

    spec = importlib.util.spec_from_file_location("kl_alpha", REPOSITORY / "bench" / "experiments" / "kl_alpha.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quadratic = [0.01 * alpha ** 2 for alpha in module.ALPHAS]
    assert module.alpha_at(quadratic, 0.04) == pytest.approx(2.0)
    assert module.alpha_at(quadratic, 0.0225) == pytest.approx(1.5, rel=1e-3)
    assert module.alpha_at(quadratic, 1e-9) == module.ALPHAS[0] and module.alpha_at(quadratic, 10.0) == module.ALPHAS[-1]
    bumpy = [0.001, 0.002, 0.05, 0.03, 0.06, 0.2, 0.5]  # not monotone: the first crossing
    assert module.ALPHAS[1] < module.alpha_at(bumpy, 0.01) < module.ALPHAS[2]
