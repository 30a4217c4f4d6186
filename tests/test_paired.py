"""Paired statistics of `contrans compare` (issue 41): the bootstrap and permutation test on synthetic per-document
scores, the random band, the verdicts, the bad inputs, and a compare with a band of 3 on tiny models."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.paired import (Band, PairedTest, RowTests, analyse, bootstrap_interval, format_test,
                                                 paired_test, sign_flip_p_value, verdict, verdicts)
from lm_eval_contrans.experiments.report import Row, report_markdown


def synthetic(seed: int, difference: float, documents: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Per-document scores of a base and a steered row: shared per-document difficulty, the steered row shifted by
    `difference` with noise of its own (the pairing is what makes the difference visible)."""
    rng = np.random.default_rng(1000 + seed)
    base = rng.normal(0, 3, documents)
    return base + difference + rng.normal(0, 0.5, documents), base


def test_the_bootstrap_interval_covers_a_known_difference_in_most_seeds():
    covered, found = 0, 0
    for seed in range(40):
        steered, base = synthetic(seed, 0.3)
        test = paired_test(list(steered), list(base), seed=seed)
        covered += test.low <= 0.3 <= test.high
        found += test.p_value < 0.05
        assert test.low < test.difference < test.high
    assert covered >= 34  # 95 % coverage expects 38 of 40
    assert found >= 36  # 0.3 against a paired noise of 0.5 / sqrt(80): the paired test sees it nearly always


def test_a_zero_difference_gives_p_above_0_05_in_most_seeds():
    p_values = [paired_test(*map(list, synthetic(seed, 0.0)), seed=seed).p_value for seed in range(40)]
    assert sum(p > 0.05 for p in p_values) >= 34
    assert 0.2 < float(np.median(p_values)) < 0.8  # uniform under no effect


def test_the_same_seed_gives_the_same_interval_and_other_seeds_differ_by_at_most_one_in_the_last_digit_printed():
    from lm_eval_contrans.experiments.paired import decimals

    steered, base = synthetic(3, 0.3)
    assert bootstrap_interval(steered - base, seed=5) == bootstrap_interval(steered - base, seed=5)
    tests = [paired_test(list(steered), list(base), seed=seed) for seed in range(20)]
    places = decimals(tests[0])
    assert places == 2 and 0.01 < tests[0].stderr < 0.1  # down to the standard error's leading digit
    ends = np.array([[round(test.low, places), round(test.high, places)] for test in tests])
    assert np.abs(ends - ends[0]).max() <= 10 ** -places + 1e-9
    assert (ends == ends[0]).all(axis=1).sum() >= 10  # most seeds print the very same interval
    assert len({format_test(test) for test in tests}) <= 4


def test_the_permutation_test_is_exact_for_few_documents():
    assert sign_flip_p_value([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # all +, all -: as far as observed
    assert sign_flip_p_value([1.0, -1.0]) == 1.0
    assert sign_flip_p_value([0.0] * 20) == 1.0  # nothing changed: no evidence at all
    one = paired_test([1.0], [0.0])
    assert (one.low, one.high) == (1.0, 1.0) and not one.distinguishable  # a point interval, p = 1
    with pytest.raises(ValueError, match="same documents: 2 against 3"):
        paired_test([1.0, 2.0], [1.0, 2.0, 3.0])


def test_the_band_summary():
    band = Band((0.2, 0.9, 0.5))
    assert band.mean == pytest.approx(1.6 / 3) and band.spread == (0.2, 0.9) and band.spread_name == "min–max"
    assert band.place(1.0) == "above 3 of 3" and band.place(0.5) == "above 1 of 3, level with 1"
    assert band.place(0.1) == "above 0 of 3"
    assert band.place(1.0, " random directions") == "above all 3 random directions"
    assert band.place(0.5, " random directions") == "above 1 of 3 random directions, level with 1"
    wide = Band(tuple(float(value) for value in range(11)))  # from 10 directions: the 10-90 % range
    assert wide.spread == (1.0, 9.0) and wide.spread_name == "10–90 %"


def entry(alpha: float, value: float, vs_base: PairedTest, vs_band: PairedTest | None, band=Band((0.1, 0.2, 0.3))):
    return RowTests(f"+ ConTrans α={alpha:g}", "contrans", alpha, value, vs_base, vs_band, band)


def test_the_verdict_names_the_alpha_that_beats_the_band_most_surely():
    beats = PairedTest(9.52, 8.81, 10.24, 0.0001, 200, 0.36)
    weak = PairedTest(0.5, -0.2, 1.2, 0.2, 200, 0.36)
    lines = verdict("sentiment, contrans_sentiment (margin)",
                    [entry(1, 13.3, beats, PairedTest(9.9, 9.1, 10.6, 0.0001, 200, 0.37)), entry(5, 4.0, weak, weak)])
    assert lines == ("sentiment, contrans_sentiment (margin): the transplant at α 1 beats base by +9.5 (95 % CI 8.8 "
                     "to 10.2) and beats the random band's mean by +9.9 (95 % CI 9.1 to 10.6); above all 3 random directions")
    # the alpha chosen is the one whose interval against the band lies highest, not the first or the largest score
    later = verdict("s", [entry(1, 13.3, weak, weak), entry(5, 4.0, beats, PairedTest(3.0, 2.5, 3.5, 0.0001, 200, 0.2))])
    assert later.startswith("s: the transplant at α 5 beats base by +9.5")


def test_the_verdict_says_when_the_transplant_is_not_told_from_random():
    base_test = PairedTest(0.13, 0.03, 0.23, 0.01, 40, 0.05)
    band = Band((0.05, 0.4, 1.0))
    line = verdict("anger, emotion_anger (success)",
                   [entry(1, 0.2, base_test, PairedTest(-0.28, -0.5, 0.1, 0.3, 40, 0.15), band)])
    assert line == ("anger, emotion_anger (success): not distinguishable from random (the band spans 0.050 to 1.000 "
                    "(min–max) at α 1; the transplant 0.200, above 1 of 3 random directions)")
    below = verdict("x", [entry(1, 0.0, base_test, PairedTest(-0.4, -0.6, -0.2, 0.001, 40, 0.1), band)])
    assert below.startswith("x: below random: at α 1 the transplant falls below the random band's mean by -0.4 (95 % "
                            "CI -0.6 to -0.2) (the band spans")
    alone = verdict("x", [entry(1, 0.2, base_test, None, None)])
    assert alone == "x: the transplant at α 1 beats base by +0.13 (95 % CI 0.03 to 0.23); no random band"
    level = verdict("x", [entry(1, 0.2, PairedTest(0.02, -0.05, 0.09, 0.6, 40, 0.035), None, None)])
    assert level == ("x: the transplant at α 1 is not distinguishable from base (+0.02 (95 % CI -0.05 to 0.09, p 0.60)); "
                     "no random band")


def grid_row(name: str, kind: str, alpha, scores: list[float], task: str = "t", hashes: dict | None = None) -> Row:
    return Row(name, {task: {"acc,none": float(np.mean(scores))}}, kind, alpha, main_metrics={task: "acc"},
               per_document={task: {"acc": scores}}, document_hashes=hashes or {})


def test_analyse_computes_every_test_from_the_rows():
    base = grid_row("base target", "base", 0.0, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    steered = grid_row("+ ConTrans α=1", "contrans", 1.0, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    band = [grid_row(f"random {seed}", "random", 1.0, scores) for seed, scores in
            enumerate([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])]
    analysis = analyse([base, steered, *band], [("t", "acc")])
    tested, = analysis.tests["t", "acc"]
    assert tested.vs_base == paired_test(steered.per_document["t"]["acc"], base.per_document["t"]["acc"])
    band_mean = [0.5, 1.0, 0.0, 0.5, 0.0, 0.0]  # per document, the mean over the two directions
    assert tested.vs_band == paired_test(steered.per_document["t"]["acc"], band_mean)
    assert tested.band.values == (1 / 6, 0.5) and tested.band.place(tested.value) == "above 2 of 2"
    assert analysis.notes == {}


def test_rows_scored_on_different_documents_get_no_paired_test_naming_the_task():
    base = grid_row("base target", "base", 0.0, [0.0, 1.0, 0.0, 1.0])
    longer = grid_row("+ ConTrans α=1", "contrans", 1.0, [1.0] * 8)
    analysis = analyse([base, longer], [("t", "acc")])
    assert analysis.notes["t", "acc"] == ("t: the rows were scored on different documents (4 in base target, 8 in "
                                          "+ ConTrans α=1): no paired test; tabulate runs of one document set")
    assert analysis.tests["t", "acc"][0].vs_base is None
    # as many documents, but other ones (another --limit, another data file): told apart by their hashes
    same_size = [grid_row("base target", "base", 0.0, [0.0, 1.0], hashes={"t": "a"}),
                 grid_row("+ ConTrans α=1", "contrans", 1.0, [1.0, 1.0], hashes={"t": "b"})]
    assert "t: the rows were scored on different documents" in analyse(same_size, [("t", "acc")]).notes["t", "acc"]


def test_a_metric_without_per_document_scores_is_said_and_not_tested():
    from lm_eval_contrans.experiments.grid import per_document_scores

    samples = [{"doc_id": 0, "acc": 1, "bleu": ("ref", "pred")}, {"doc_id": 1, "acc": np.float32(0.0), "bleu": ("r", "p")}]
    assert per_document_scores(samples, ["acc", "bleu", "missing"]) == {"acc": [1.0, 0.0]}
    rows = [Row("base target", {"t": {"bleu,none": 3.0}}, "base", 0.0, main_metrics={"t": "bleu"}, per_document={"t": {}}),
            Row("+ ConTrans α=1", {"t": {"bleu,none": 4.0}}, "contrans", 1.0, main_metrics={"t": "bleu"},
                per_document={"t": {}})]
    text = report_markdown(rows, concept="sentiment")
    assert "t (bleu): lm-eval gives bleu for the whole task, not per document: no paired test" in text
    assert "- sentiment, t (bleu): no verdict (t (bleu): lm-eval gives bleu" in text


@pytest.mark.parametrize("count", [0, -3])
def test_a_band_of_no_directions_is_refused_at_the_start(count, tmp_path, capsys):
    from lm_eval_contrans.cli import main

    assert main(["compare", "--source", "a", "--target", "b", "--tasks", "t", "--random-directions", str(count),
                 "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"contrans: error: random_directions: {count}: give --random-directions 1 "
                                              "or more")
    assert not (tmp_path / "out").exists()


def test_a_huge_band_says_what_it_would_cost_and_how_to_go_ahead(tmp_path, capsys):
    from lm_eval_contrans.cli import main
    from lm_eval_contrans.experiments.compare import ComparePlan, check_random_directions, run_compare

    assert main(["compare", "--source", "a", "--target", "b", "--tasks", "t", "--alphas", "1", "2", "--out",
                 str(tmp_path / "out"), "--random-directions", "100"]) == 2
    assert capsys.readouterr().err == ("contrans: error: random_directions: 100 directions at 2 alpha(s) run 200 random "
                                       "rows, up to 100x the transplant rows' time (a generation task, or vLLM, runs each row whole; "
                                       "on HF loglikelihood rows share the passes before the steered block); give "
                                       "--allow-large-band to run them, or fewer directions\n")
    check_random_directions(100, [1.0, 2.0], allow_large=True)  # asked for: allowed
    check_random_directions(64, [1.0])
    with pytest.raises(ConTransError, match="^random_directions: 0: give"):  # from Python too, before any model loads
        run_compare(ComparePlan("a", "b", "sentiment", ["t"], out=tmp_path / "py", random_directions=0))
    with pytest.raises(ConTransError, match="^random_directions: True: give"):
        check_random_directions(True, [1.0])


def test_table_of_folders_with_different_document_sets_refuses_the_paired_test(tmp_path, capsys):
    from lm_eval_contrans.cli import main

    for folder, count in (("small", 4), ("large", 8)):
        rows = [grid_row("base target" if folder == "small" else "base", "base" if folder == "small" else "other", 0.0,
                         [0.0] * count, task="contrans_sentiment"),
                grid_row(f"+ ConTrans α=1 ({folder})", "contrans", 1.0, [1.0] * count, task="contrans_sentiment")]
        (tmp_path / folder / "rows").mkdir(parents=True)
        (tmp_path / folder / "rows" / "index.json").write_text(json.dumps([row.name for row in rows]))
        for row in rows:
            (tmp_path / folder / "rows" / row.name).mkdir()
            (tmp_path / folder / "rows" / row.name / "row.json").write_text(json.dumps(row.to_json()))
    assert main(["table", str(tmp_path / "small"), str(tmp_path / "large")]) == 0
    printed = capsys.readouterr().out
    assert ("contrans_sentiment: the rows were scored on different documents (4 in base target, 4 in + ConTrans α=1 "
            "(small), 8 in base, 8 in + ConTrans α=1 (large)): no paired test") in printed
    assert "- contrans_sentiment (acc): no verdict (contrans_sentiment: the rows were scored on different" in printed


@pytest.fixture(scope="module")
def band(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    from lm_eval_contrans.experiments.compare import ComparePlan, run_compare

    plan = ComparePlan(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment",
                       tasks=["contrans_sentiment"], alphas=[1.0, 40.0], out=tmp_path_factory.mktemp("band"), limit=6,
                       batch_size=6, device="cpu", random_directions=3)
    return plan, run_compare(plan)


@pytest.mark.cli  # a compare on tiny models: with the slow checks (--all, -m cli)
def test_compare_runs_a_band_of_seeded_directions_at_each_alpha(band):
    from lm_eval_contrans.artifact import load_steering

    plan, rows = band
    assert [row.name for row in rows] == [
        "base target", "+ ConTrans α=1", "+ ConTrans α=40",
        "random vector α=1", "random vector α=1 (seed 1)", "random vector α=1 (seed 2)", "target's own vector α=1",
        "random vector α=40", "random vector α=40 (seed 1)", "random vector α=40 (seed 2)", "target's own vector α=40",
        "prompt baseline", "source"]
    steering = {row.name: load_steering(plan.out / row.artifact)[0] for row in rows if row.artifact}
    transplant = steering["+ ConTrans α=1"]
    seeds = [steering[name] for name in ("random vector α=1", "random vector α=1 (seed 1)", "random vector α=1 (seed 2)")]
    assert [direction.origin["seed"] for direction in seeds] == [0, 1, 2]
    assert all(d.vector.norm() == pytest.approx(float(transplant.vector.norm()), rel=1e-5) for d in seeds)
    assert not seeds[0].vector.equal(seeds[1].vector)
    assert steering["random vector α=40 (seed 2)"].vector.equal(seeds[2].vector)  # the same band at every alpha
    margins = [row.results["contrans_sentiment"]["margin,none"] for row in rows if row.kind == "random" and row.alpha == 40]
    assert len(set(margins)) == 3  # three directions, three scores
    for row in rows:  # the main metric and the extra metric kept per document, on the same documents
        assert sorted(row.per_document["contrans_sentiment"]) == ["acc_norm", "margin"], row.name
        assert len(row.per_document["contrans_sentiment"]["margin"]) == 6
        assert row.document_hashes == rows[0].document_hashes
        assert np.mean(row.per_document["contrans_sentiment"]["margin"]) == pytest.approx(
            row.results["contrans_sentiment"]["margin,none"], abs=1e-6)


@pytest.mark.cli  # a compare on tiny models: with the slow checks (--all, -m cli)
def test_the_table_shows_the_band_paired_intervals_and_a_verdict_computed_from_the_rows(band):
    plan, rows = band
    table = (plan.out / "table.md").read_text()
    random = [row for row in rows if row.kind == "random" and row.alpha == 40]
    margins = [row.results["contrans_sentiment"]["margin,none"] for row in random]
    assert (f"| random band α=40 (3 directions) | " in table and
            f"{np.mean(margins):.3f} [{min(margins):.3f}–{max(margins):.3f}] |" in table)
    assert "| random vector α=40 (seed 1) |" not in table  # the band is one line of the main table
    steered = next(row for row in rows if row.name == "+ ConTrans α=40")
    base_scores, steered_scores = (row.per_document["contrans_sentiment"]["margin"] for row in (rows[0], steered))
    band_mean = np.mean([row.per_document["contrans_sentiment"]["margin"] for row in random], axis=0)
    vs_base, vs_band = paired_test(steered_scores, base_scores), paired_test(steered_scores, list(band_mean))
    place = Band(tuple(margins)).place(steered.results["contrans_sentiment"]["margin,none"])
    assert (f"| + ConTrans α=40 | {steered.results['contrans_sentiment']['margin,none']:.3f} | "
            f"{format_test(vs_base).replace('95 % CI ', '')} | ") in table
    assert f"{format_test(vs_band).replace('95 % CI ', '')} | " in table and f"| {place} |" in table
    expected = verdicts(analyse(rows, [("contrans_sentiment", "acc_norm"), ("contrans_sentiment", "margin")]),
                        "sentiment")
    assert len(expected) == 2 and expected[1].startswith("sentiment, contrans_sentiment (margin): ")
    assert table.endswith("## Verdicts\n\n" + "".join(f"- {line}\n" for line in expected))
    with open(plan.out / "table.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    by_name = {line["model"]: line for line in lines}
    assert float(by_name["+ ConTrans α=40"]["contrans_sentiment/margin/vs_base"]) == pytest.approx(vs_base.difference)
    assert float(by_name["+ ConTrans α=40"]["contrans_sentiment/margin/vs_band_low"]) == pytest.approx(vs_band.low)
    assert by_name["+ ConTrans α=40"]["contrans_sentiment/margin/in_band"] == place
    band_line = by_name["random band α=40 (3 directions)"]
    assert band_line["kind"] == "random band" and float(band_line["contrans_sentiment/margin"]) == pytest.approx(np.mean(margins))
    assert float(band_line["contrans_sentiment/margin/band_high"]) == pytest.approx(max(margins))
    assert len(lines) == len(rows) + 2  # every row, each direction too, and a line per band
    png = (plan.out / "plots" / "contrans_sentiment_margin.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cli  # a compare on tiny models: with the slow checks (--all, -m cli)
def test_a_larger_band_reuses_the_rows_it_has_and_one_direction_is_the_single_random_row(band, monkeypatch, capsys):
    import lm_eval

    from lm_eval_contrans.experiments.compare import run_compare

    plan, rows = band
    calls, real = [], lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    bigger = run_compare(dataclasses.replace(plan, random_directions=4))
    assert len(calls) == 2  # seed 3 at each alpha; the other rows read back
    assert [row.name for row in bigger if row.kind == "random" and row.alpha == 1] == [
        "random vector α=1", "random vector α=1 (seed 1)", "random vector α=1 (seed 2)", "random vector α=1 (seed 3)"]
    single = run_compare(dataclasses.replace(plan, random_directions=1))
    assert len(calls) == 2  # today's single random row is the band's first direction
    assert [row.name for row in single if row.kind == "random"] == ["random vector α=1", "random vector α=40"]
    table = (plan.out / "table.md").read_text()
    assert "| random vector α=1 |" in table and "random band" not in table.split("## Paired tests")[0]
    run_compare(plan)  # back to the fixture's band for the other tests


@pytest.mark.cli  # a compare on tiny models: with the slow checks (--all, -m cli)
def test_contrans_compare_prints_the_band_the_paired_tests_and_the_verdicts(band, capsys, monkeypatch):
    import lm_eval

    from lm_eval_contrans.cli import main

    plan, rows = band
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *args, **kwargs: pytest.fail("a row ran again"))
    assert main(["compare", "--source", plan.source, "--target", plan.target, "--tasks", "contrans_sentiment",
                 "--alphas", "1", "40", "--limit", "6", "--batch_size", "6", "--device", "cpu", "--out", str(plan.out),
                 "--random-directions", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith((plan.out / "table.md").read_text())
    assert "random band α=1 (3 directions)" in printed and "## Verdicts" in printed


def test_keeping_scores_per_document_leaves_row_keys_as_they_were_and_a_row_saved_without_them_runs_again(tmp_path):
    """Saved rows (bench/results, users' compare folders) are found by key: asking for per-document scores must not
    change it; a row saved before paired tests matches its key but lacks the scores, so it runs once more."""
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow

    row = GridRow("+ ConTrans α=1", "contrans", "some/target", alpha=1.0)
    settings = EvalSettings(tasks=["contrans_sentiment"], limit=4, per_document=("acc",))
    plain, paired = Grid(tmp_path, settings), Grid(tmp_path, dataclasses.replace(settings, paired_metrics=("margin",)))
    assert plain.row_key(row, "steering") == paired.row_key(row, "steering")
    assert plain.row_key(row, "steering") != Grid(tmp_path, dataclasses.replace(settings, per_document=())).row_key(
        row, "steering")  # per_document stays in the key, as the saved bench rows have it
    saved = {"results": {"contrans_sentiment": {"acc,none": 1.0}}, "per_document": {}}
    assert paired._lacks_documents(saved) and not plain._lacks_documents(saved)
    assert not paired._lacks_documents({**saved, "per_document": {"contrans_sentiment": {}}})


def gap_rows(base: np.ndarray, transplant: np.ndarray, source: np.ndarray, instruct: np.ndarray | None = None) -> list[Row]:
    """A compare's rows on one column: base, a transplant, one random direction, the source, the --instruct row."""
    rows = [grid_row("base target", "base", 0.0, list(base)), grid_row("+ ConTrans α=1", "contrans", 1.0, list(transplant)),
            grid_row("random vector α=1", "random", 1.0, list(base)), grid_row("source", "source", None, list(source))]
    return rows + ([grid_row("instruct (org/target-it)", "instruct", None, list(instruct))] if instruct is not None else [])


def test_a_transplant_closing_half_the_gap_to_the_instruction_tuned_row_gets_an_interval_around_50_percent():
    from lm_eval_contrans.experiments.paired import closed_share, format_share

    rng = np.random.default_rng(7)
    base = rng.normal(0, 3, 80)
    gap = 1.0 + rng.normal(0, 0.5, 80)
    test, share = closed_share(list(base + gap / 2), list(base + gap), list(base))  # exactly half on every document
    assert test.distinguishable and share == pytest.approx((0.5, 0.5, 0.5))
    noise = rng.normal(0, 0.3, 80)
    _, (closed, low, high) = closed_share(list(base + gap / 2 + noise - noise.mean()), list(base + gap), list(base))
    assert closed == pytest.approx(0.5) and 0.35 < low < 0.5 < high < 0.65
    assert format_share((closed, low, high)) == f"50 % (95 % CI {100 * low:.0f} to {100 * high:.0f} %)"
    covered = 0
    for seed in range(40):  # the population's share is one half: the interval covers it in about 95 % of samples
        draw = np.random.default_rng(100 + seed)
        base, gap = draw.normal(0, 3, 80), 1.0 + draw.normal(0, 0.5, 80)
        _, (_, low, high) = closed_share(list(base + 0.5 + draw.normal(0, 0.5, 80)), list(base + gap), list(base),
                                         seed=seed)
        covered += low <= 0.5 <= high
    assert covered >= 34


def test_the_table_and_verdict_say_what_the_transplant_closes_and_where_there_is_no_gap():
    rng = np.random.default_rng(3)
    base, gap = rng.normal(0, 3, 80), 1.0 + rng.normal(0, 0.5, 80)
    level = base + np.tile([0.5, -0.5], 40)  # the --instruct row: as far above base as below, a gap of 0
    rows = gap_rows(base, base + gap / 2, base + gap, level)
    analysis = analyse(rows, [("t", "acc")])
    half, none = analysis.gaps["t", "acc"]
    assert (half.reference, half.share[0]) == ("source", pytest.approx(0.5))
    assert none.share is None and none.gap.difference == 0.0
    assert none.note.startswith("no gap to close: the instruction-tuned target is not distinguishable from base (+0.0")
    text = report_markdown(rows, concept="sentiment")
    assert "| source | instruction-tuned source | " in text and "| instruct (org/target-it) | instruction-tuned target | " in text
    assert "| + ConTrans α=1 | transplant | " in text and "| base target | base | " in text
    assert "| + ConTrans α=1 | source (instruction-tuned source) | +1.0" in text and "| 50 % (95 % CI " in text
    no_gap_line, = [line for line in text.splitlines() if line.startswith("| + ConTrans α=1 | instruct (org/target-it)")]
    assert no_gap_line.endswith("| no gap to close |") and "%" not in no_gap_line
    verdict_line = text.split("## Verdicts\n\n")[1]
    assert "; at α 1 it closes 50 % (95 % CI " in verdict_line
    assert "%) of the gap between base and the instruction-tuned source; the instruction-tuned target is not " \
           "distinguishable from base: no gap to close\n" in verdict_line


def test_the_verdicts_gap_is_the_chosen_alphas_and_rows_that_cannot_be_paired_say_so():
    rng = np.random.default_rng(4)
    base, gap = rng.normal(0, 3, 40), 2.0 + rng.normal(0, 0.5, 40)
    rows = gap_rows(base, base + gap / 4, base + gap)
    rows.insert(2, grid_row("+ ConTrans α=5", "contrans", 5.0, list(base + gap * 0.75)))
    rows.insert(3, grid_row("random vector α=5", "random", 5.0, list(base)))
    line, = verdicts(analyse(rows, [("t", "acc")]))
    assert line.startswith("t (acc): the transplant at α 5 ") and "; at α 5 it closes 75 % (95 % CI " in line
    # the source scored without per-document scores (an lm-eval run tabulated beside the grid): said, not paired
    rows[-1] = Row("source", {"t": {"acc,none": 0.9}}, "source", main_metrics={"t": "acc"})
    text = report_markdown(rows)
    assert "| + ConTrans α=1 | source (instruction-tuned source) | — |  | source: no per-document scores of t (acc): " \
           "no gap closed |" in text
    # rows scored on other documents: the column's note, no gap
    rows[-1] = grid_row("source", "source", None, [1.0] * 8)
    assert ("### t (acc): the gap to the instruction-tuned rows\n\nt: the rows were scored on different documents "
            in report_markdown(rows))
    assert verdicts(analyse(rows, [("t", "acc")]))[0].startswith("t (acc): no verdict (t: the rows were scored")


def save_folder(folder, rows: list[Row]) -> None:
    """Rows as `contrans compare` saves them: rows/index.json and a row.json per row."""
    from lm_eval_contrans.paths import safe_name

    (folder / "rows").mkdir(parents=True)
    (folder / "rows" / "index.json").write_text(json.dumps([safe_name(row.name) for row in rows]))
    for row in rows:
        (folder / "rows" / safe_name(row.name)).mkdir()
        (folder / "rows" / safe_name(row.name) / "row.json").write_text(json.dumps(row.to_json()))


def test_contrans_table_reports_the_gap_closed_and_tabulates_folders_without_instruction_tuned_rows(tmp_path, capsys):
    from lm_eval_contrans.cli import main

    rng = np.random.default_rng(5)
    base, gap = rng.normal(0, 3, 60), 1.0 + rng.normal(0, 0.5, 60)
    save_folder(tmp_path / "grid", gap_rows(base, base + gap / 2, base + gap, base + gap * 2))
    assert main(["table", str(tmp_path / "grid"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "## The gap to the instruction-tuned rows" in printed and "| instruction-tuned target |" in printed
    assert "of the gap between base and the instruction-tuned source; at α 1 it closes 25 % (95 % CI " in printed
    with open(tmp_path / "out" / "gap_closed.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["reference"], line["reference_kind"]) for line in lines] == [
        ("source", "source"), ("instruct (org/target-it)", "instruct")]
    assert [float(line["closed"]) for line in lines] == pytest.approx([0.5, 0.25])
    assert float(lines[0]["closed_low"]) < 0.5 < float(lines[0]["closed_high"]) and lines[0]["note"] == ""
    with open(tmp_path / "out" / "table.csv", newline="") as handle:
        table = {line["model"]: line for line in csv.DictReader(handle)}
    assert (table["source"]["kind"], table["source"]["kind_label"]) == ("source", "instruction-tuned source")
    # a folder saved before the instruction-tuned rows were paired: no source, no per-document scores
    old = [Row("base target", {"t": {"acc,none": 0.5}}, "base", 0.0), Row("+ ConTrans α=1", {"t": {"acc,none": 0.7}},
                                                                          "contrans", 1.0)]
    save_folder(tmp_path / "old", old)
    assert main(["table", str(tmp_path / "old"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| + ConTrans α=1 | transplant | 0.700 |" in printed and "instruction-tuned" not in printed
    assert not (tmp_path / "out" / "gap_closed.csv").exists()  # the first table's, gone with its rows
